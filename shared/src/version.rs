//! Release versions and names: Debian version ordering (as `dpkg --compare-versions`), and the
//! character rule for products, versions and layer names, which become file names on FAT and
//! words in the module file (DESIGN.md: `[A-Za-z0-9._+~-]`).

use std::cmp::Ordering;

/// True when `s` is non-empty and only holds `[A-Za-z0-9._+~-]`.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'~' | b'-'))
}

/// Compares two versions in Debian order: `[epoch:]upstream[-revision]`, where `~` sorts before
/// everything (even the end), digit runs compare numerically and letters before other symbols.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| verrevcmp(ua, ub))
        .then_with(|| verrevcmp(ra, rb))
}

fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), r)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            if i < a.len() && !a[i].is_ascii_digit() {
                i += 1;
            }
            if j < b.len() && !b[j].is_ascii_digit() {
                j += 1;
            }
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        let sj = j;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[si..i], &b[sj..j]);
        let c = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_order() {
        let lt = |a: &str, b: &str| assert_eq!(compare(a, b), Ordering::Less, "{a} < {b}");
        lt("6.9", "6.10");
        lt("6.10", "6.11");
        lt("6.11", "6.11.1");
        lt("1.0~rc1", "1.0");
        lt("1.0", "1.0a");
        lt("1.0a", "1.0+b1");
        lt("1:0.1", "2:0.0");
        lt("9.9", "1:0.0");
        lt("1.0-1", "1.0-2");
        lt("1.0~~", "1.0~");
        assert_eq!(compare("6.010", "6.10"), Ordering::Equal);
        assert_eq!(compare("7", "7"), Ordering::Equal);
        lt("7", "7.0");
    }

    #[test]
    fn safe_names() {
        assert!(is_safe_name("Tails_6.10+deb12u1~rc1-2"));
        for bad in ["", "a b", "a/b", "a:b", "é", "x\n"] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }
}
