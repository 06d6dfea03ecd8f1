//! Name translation and checks: plain ISO 9660 identifiers, Joliet (UCS-2) identifiers and the
//! checks every translated or Rock Ridge name passes before it becomes a path component.

use super::MAX_NAME;

/// Checks a translated name: not empty, `.` or `..`, no `/` or NUL, at most [`MAX_NAME`] bytes.
pub(super) fn check_name(name: &[u8]) -> Result<(), &'static str> {
    match name {
        [] => Err("has an empty name"),
        b"." | b".." => Err("is named . or .."),
        _ if name.len() > MAX_NAME => Err("has a name longer than 1024 bytes"),
        _ if name.iter().any(|&c| c == b'/' || c == 0) => Err("has a name containing / or NUL"),
        _ => Ok(()),
    }
}

/// Removes a `;<digits>` version suffix and trailing dots (keeping a one-character name).
fn strip_version(mut name: &[u8]) -> &[u8] {
    if let Some(i) = name.iter().rposition(|&c| c == b';') {
        let (base, version) = name.split_at(i);
        if version.iter().skip(1).all(u8::is_ascii_digit) {
            name = base;
        }
    }
    while name.len() > 1 {
        match name.split_last() {
            Some((b'.', rest)) => name = rest,
            _ => break,
        }
    }
    name
}

/// A plain ISO 9660 identifier as a name: version and trailing dot stripped, case kept.
pub(super) fn iso_name(ident: &[u8]) -> Vec<u8> {
    strip_version(ident).to_vec()
}

/// A Joliet identifier (UCS-2/UTF-16 big-endian) as a UTF-8 name, version and trailing dots
/// stripped; unpaired surrogates become U+FFFD.
pub(super) fn joliet_name(ident: &[u8]) -> Vec<u8> {
    let units = ident
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    let name: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    strip_version(name.as_bytes()).to_vec()
}

/// Text of a path for messages.
pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(iso_name(b"README.TXT;1"), b"README.TXT");
        assert_eq!(iso_name(b"FOO.;1"), b"FOO");
        assert_eq!(iso_name(b"FOO"), b"FOO");
        let utf16: Vec<u8> = "grüße.txt;1"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert_eq!(joliet_name(&utf16), "grüße.txt".as_bytes());
        assert_eq!(joliet_name(&[0xD8, 0x00, 0, b'a']), "\u{FFFD}a".as_bytes());
    }
}
