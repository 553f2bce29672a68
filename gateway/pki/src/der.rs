//! The few DER elements the gateway reads itself: the signed parts of a
//! CRL, and the CMS structures of PDF signatures, whose signed attributes
//! must be verified exactly as encoded (a decoder that re-sorts SET OF
//! cannot give them back).

/// One DER element: (tag, the whole element, its contents, what follows).
pub type DerElement<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The first DER element of `input`. Only the single-byte tags and definite
/// lengths DER allows.
pub fn der_next(input: &[u8]) -> Option<DerElement<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut l = 0usize;
        for &b in &rest[..n] {
            l = (l << 8) | usize::from(b);
        }
        rest = &rest[n..];
        l
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    let (contents, after) = rest.split_at(len);
    Some((tag, &input[..header + len], contents, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_elements_are_split_and_bad_lengths_refused() {
        assert_eq!(
            der_next(&[0x30, 0x02, 0x05, 0x00, 0xff]),
            Some((
                0x30,
                &[0x30, 0x02, 0x05, 0x00][..],
                &[0x05, 0x00][..],
                &[0xff][..]
            ))
        );
        assert_eq!(der_next(&[0x30, 0x03, 0x05, 0x00]), None);
        assert_eq!(der_next(&[0x30, 0x80]), None);
        assert_eq!(der_next(&[0x30]), None);
        let long = [&[0x04, 0x81, 0x80][..], &[0u8; 128]].concat();
        assert_eq!(der_next(&long).map(|t| t.2.len()), Some(128));
    }
}
