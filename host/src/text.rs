//! Text from outside the host (plugins, vendors, producers) cut to a known size before it
//! becomes a Kafka header, a retry record field or a log field. Owns only the cutting rule;
//! each caller picks its own limit.

use std::borrow::Cow;

/// What a cut string ends with, so a reader knows it is not whole.
const CUT_MARK: &str = "…[cut]";

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn cap(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max.saturating_sub(CUT_MARK.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{CUT_MARK}", &text[..end]))
}

/// As [`cap`], in place.
pub fn cap_in_place(text: &mut String, max: usize) {
    if let Cow::Owned(cut) = cap(text, max) {
        *text = cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_on_a_character_boundary() {
        assert_eq!(cap("abc", 3), "abc");
        let long = "가".repeat(1000); // 3 bytes a character
        let cut = cap(&long, 100);
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with(CUT_MARK));
        let mut owned = "x".repeat(5000);
        cap_in_place(&mut owned, 1024);
        assert!(owned.len() <= 1024);
    }
}
