#!/usr/bin/env bash
# Proves ops/Dockerfile's runtime stage on a machine that reaches no image registry:
# the binaries built here, with the shared libraries they load, CA roots and a
# non-root user, go into a FROM scratch image that keeps every other line of the
# runtime stage (ENV, VOLUME, EXPOSE, USER, HEALTHCHECK, ENTRYPOINT, CMD). Then a
# node runs in it on mounted config and data, its health check turns healthy, and an
# entry committed through it verifies against the genesis file.
#
#   ops/container/local-image.sh [WORKDIR]      (root, podman; port 17600 free)
#
# PODMAN names the command (default podman). The health check is run by the script,
# the same command podman's timer runs (which needs systemd), so the container is
# started with its timer off.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
image=localhost/ledger-local:test
name=ledger-local-test
port=17600
uid=65532
read -r -a podman <<< "${PODMAN:-podman}"

cargo build --release -p ledger --bin ledgerd --bin ledgerctl
rm -rf "$work/rootfs" && mkdir -p "$work/rootfs/usr/local/bin" "$work/rootfs/etc/ssl/certs"
install -m 0755 target/release/ledgerd target/release/ledgerctl "$work/rootfs/usr/local/bin/"
# What a distroless cc image holds for a glibc program: its libraries and loader.
libs=$(ldd target/release/ledgerd target/release/ledgerctl |
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
for lib in $libs; do
    mkdir -p "$work/rootfs$(dirname "$lib")"
    cp -L "$lib" "$work/rootfs$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$uid" "$uid" > "$work/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$uid" > "$work/rootfs/etc/group"
mkdir -p "$work/rootfs/tmp" && chmod 1777 "$work/rootfs/tmp"

# The runtime stage, its base and its copy from the build stage swapped for the rootfs.
{
    echo "FROM scratch"
    echo "COPY rootfs/ /"
    sed -n '/^FROM gcr.io\/distroless/,$p' ops/Dockerfile | sed '1d;/^COPY --from=build/d'
} > "$work/Containerfile"
"${podman[@]}" build --format docker -q -t "$image" -f "$work/Containerfile" "$work" >/dev/null
echo "== image: $("${podman[@]}" image inspect "$image" --format '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}')"
echo "== $("${podman[@]}" run --rm "$image" version)"

# One node alone, its files owned by the image's user, the key private.
rm -rf "$work/dev" "$work/data"
target/release/ledgerd dev init --nodes 1 --dir "$work/dev" --difficulty 8 >/dev/null
node="$work/dev/node0"
cp "$work/dev/genesis.toml" "$node/genesis.toml"
sed -i -e 's|^genesis = .*|genesis = "genesis.toml"|' \
    -e 's|^data_dir = .*|data_dir = "/var/lib/ledger"|' \
    -e 's|^api_listen = .*|api_listen = "0.0.0.0:7100"|' \
    -e 's|^p2p_listen = .*|p2p_listen = "0.0.0.0:7101"|' "$node/ledgerd.toml"
# Published on the host's loopback only (below): no tokens needed for this try.
echo 'api_insecure = true' >>"$node/ledgerd.toml"
# The config is mounted read-only, as a Secret or ConfigMap would be: a key's
# "never voted" mark could not be removed there, so the node would refuse to start;
# without it the node takes itself for one that may have voted (harmless on a new chain).
rm -f "$node/node.key.new"
mkdir -p "$work/data"
chown -R "$uid:$uid" "$node" "$work/data"

"${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true
trap '"${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true' EXIT
"${podman[@]}" run -d --name "$name" -p "127.0.0.1:$port:7100" \
    --health-interval disable -v "$node:/etc/ledger:ro" -v "$work/data:/var/lib/ledger" \
    "$image" >/dev/null
healthy=
for _ in $(seq 1 60); do
    if "${podman[@]}" healthcheck run "$name" >/dev/null 2>&1; then healthy=1; break; fi
    sleep 0.5
done
if [ -z "$healthy" ]; then
    "${podman[@]}" logs "$name" | tail -20
    echo "FAILED: the health check never passed" >&2
    exit 1
fi
echo "== health check: healthy; running as uid $("${podman[@]}" exec "$name" /usr/local/bin/ledgerctl status >/dev/null && "${podman[@]}" top "$name" huser | tail -1)"
target/release/ledgerctl --node "127.0.0.1:$port" submit "from a container" --wait > "$work/receipt.json"
target/release/ledgerctl verify "$work/receipt.json" --genesis "$work/dev/genesis.toml"
"${podman[@]}" stop -t 10 "$name" >/dev/null
echo "== stopped cleanly: exit $("${podman[@]}" inspect "$name" --format '{{.State.ExitCode}}')"
