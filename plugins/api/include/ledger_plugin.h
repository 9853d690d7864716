/*
 * The Ledger plugin ABI, version 1, for plugins written in C (or anything that can
 * export a C function). The Rust SDK (crate ledger-plugin-api) defines the same
 * types; see plugins/README.md for the guide.
 *
 * A plugin is a shared library exporting
 *
 *     const LedgerPluginDescriptor *ledger_plugin_descriptor(void);
 *
 * which returns a pointer to static data. Values travel as pointer + length of their
 * canonical encodings (docs/FORMAT.md: integers big-endian). Host memory is lent for
 * the duration of one call only. A buffer the plugin fills (a reason) is allocated by
 * the plugin and handed back through the descriptor's free_buffer.
 *
 * Hooks may be called from several threads at once. required_difficulty,
 * validate_entry and validate_block must be deterministic: the same input gives the
 * same answer on every member, or members disagree about blocks.
 */
#ifndef LEDGER_PLUGIN_H
#define LEDGER_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LEDGER_PLUGIN_ABI_VERSION 1
#define LEDGER_PLUGIN_ENTRY_SYMBOL "ledger_plugin_descriptor"
#define LEDGER_HEADER_LEN 136

/* Hook results. */
#define LEDGER_STATUS_OK 0     /* accepted, or the out value is set */
#define LEDGER_STATUS_REJECT 1 /* rejected; the reason buffer says why */
#define LEDGER_STATUS_FAILED 2 /* the hook failed; treated as a rejection and logged */

/* Bytes the host lends for one call; ptr may be NULL when len is 0. */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} LedgerBytes;

/* Bytes the plugin allocated; the host gives them back to free_buffer. The host
 * never interprets capacity. */
typedef struct {
    uint8_t *ptr;
    size_t len;
    size_t capacity;
} LedgerBuffer;

typedef struct {
    uint32_t abi_version; /* LEDGER_PLUGIN_ABI_VERSION */
    uint32_t struct_size; /* sizeof(LedgerPluginDescriptor) */
    const char *name;     /* NUL-terminated UTF-8, static */
    const char *version;  /* NUL-terminated UTF-8, static */
    /* How many recent headers required_difficulty wants; 0 if it has none. */
    uint32_t difficulty_window;
    /* Every hook may be NULL. */
    /* config: UTF-8 JSON ("{}" if the operator gave none); *state: the plugin's. */
    int32_t (*init)(LedgerBytes config, void **state, LedgerBuffer *error);
    void (*destroy)(void *state);
    /* headers: up to difficulty_window headers of 136 bytes, oldest first, the last
     * being the new block's parent. */
    int32_t (*required_difficulty)(void *state, LedgerBytes headers, uint32_t *difficulty,
                                   LedgerBuffer *error);
    /* entry: one canonical entry. */
    int32_t (*validate_entry)(void *state, LedgerBytes entry, LedgerBuffer *reason);
    /* header: 136 bytes; entries: u32 count, then the canonical entries. */
    int32_t (*validate_block)(void *state, LedgerBytes header, LedgerBytes entries,
                              LedgerBuffer *reason);
    /* block: the canonical block, after it was applied; failures are only logged. */
    int32_t (*on_commit)(void *state, LedgerBytes block, LedgerBuffer *error);
    void (*free_buffer)(LedgerBuffer buffer);
} LedgerPluginDescriptor;

const LedgerPluginDescriptor *ledger_plugin_descriptor(void);

#ifdef __cplusplus
}
#endif

#endif /* LEDGER_PLUGIN_H */
