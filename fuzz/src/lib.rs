//! What the fuzz targets share: the round-trip property of a canonical encoding.

/// Decodes `bytes` with `decode`; when that succeeds, the value must encode back to
/// exactly `bytes` (one encoding per value: nothing signed can be re-spelled) and
/// decode again to itself.
pub fn round_trip<T, E, B>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> B,
) where
    T: PartialEq + std::fmt::Debug,
    B: AsRef<[u8]>,
{
    let Ok(value) = decode(bytes) else {
        return;
    };
    let encoded = encode(&value);
    assert_eq!(encoded.as_ref(), bytes, "{value:?} encodes differently");
    match decode(encoded.as_ref()) {
        Ok(again) => assert_eq!(again, value),
        Err(_) => panic!("{value:?} does not decode from its own encoding"),
    }
}
