//! User and group names: which ones are refused, and the key that two names
//! are compared by.
//!
//! Names are shown exactly as registered, but two names that a person could
//! not tell apart must not both exist, or one user (or group) can pose as
//! another. So uniqueness is enforced on a key, not on the name: the name is
//! NFKC-normalised (fullwidth "Ａ" is "A", "ﬁ" is "fi", NFC and NFD forms are
//! one), case-folded ("Alice", "ALICE" and "Straße"/"STRASSE" meet), mapped to
//! its Unicode TS #39 confusable skeleton (a Cyrillic "а" is a Latin "a", "0"
//! is "o"), folded again (the skeleton may map to a capital letter), and runs
//! of white space become one space. Characters that are not shown at all
//! (default-ignorable code points such as variation selectors or Hangul
//! fillers inside a name) drop out of the key on the way.
//!
//! Some names are refused outright, because they hide or fake what a reader
//! sees: control characters, invisible and format characters (General
//! Category Cf: zero-width spaces and joiners, bidi overrides and isolates,
//! the BOM, tag characters, soft hyphens), line and paragraph separators, and
//! names that look blank or start or end with something blank.
//!
//! The key depends on the Unicode data of `unicode-normalization`, `caseless`
//! and `unicode-security`; an upgrade that changes their tables can change
//! the key of a name already stored.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Why a name is refused. The message is sent to the client as `errmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A control character (General Category Cc): line feeds, tabs, escape
    /// sequences that would drive a terminal.
    #[error("names may not contain control characters (found U+{:04X})", u32::from(*.0))]
    Control(char),
    /// An invisible or format character (General Category Cf): it changes
    /// what a name looks like, or hides, without showing itself.
    #[error(
        "names may not contain invisible or format characters such as zero-width \
         characters, bidi controls, byte order marks or tags (found U+{:04X})",
        u32::from(*.0)
    )]
    Format(char),
    /// A line or paragraph separator (Zl, Zp): it breaks a name over lines.
    #[error("names may not contain line or paragraph separators (found U+{:04X})", u32::from(*.0))]
    Separator(char),
    /// Nothing visible: only white space, fillers or blank symbols.
    #[error("a name must show something besides spaces and blank characters")]
    Blank,
    /// White space or a blank-looking character at either end.
    #[error("names may not start or end with spaces or blank characters")]
    EdgeSpace,
}

/// Checks a user or group name and returns its comparison key: two names
/// with the same key are the same name. See the module docs for the rules.
pub fn key(name: &str) -> Result<String, NameError> {
    if let Some(e) = name.chars().find_map(refused) {
        return Err(e);
    }
    let key = fold(name);
    if key.is_empty() {
        return Err(NameError::Blank);
    }
    if name.starts_with(looks_blank) || name.ends_with(looks_blank) {
        return Err(NameError::EdgeSpace);
    }
    Ok(key)
}

/// The key of a name stored before these rules existed, which may break
/// them: the same folding without the refusals, so that an old name still
/// reserves its look. `None` when it looks blank and so reserves nothing.
pub fn legacy_key(name: &str) -> Option<String> {
    Some(fold(name)).filter(|k| !k.is_empty())
}

/// Checks a free-text field shown next to names (a group description):
/// control characters and line or paragraph separators are refused, as in
/// names, so that it cannot drive a terminal or break the line it is shown
/// on. Format characters are allowed here: free text needs them (emoji
/// joiners, the Persian non-joiner) and nobody is identified by it.
/// The error is the first refused character.
pub fn check_text(text: &str) -> Result<(), char> {
    match text.chars().find(|&c| {
        matches!(
            refused(c),
            Some(NameError::Control(_) | NameError::Separator(_))
        )
    }) {
        Some(c) => Err(c),
        None => Ok(()),
    }
}

/// The refusal a character earns anywhere in a name, if any.
fn refused(c: char) -> Option<NameError> {
    match c.general_category() {
        GeneralCategory::Control => Some(NameError::Control(c)),
        GeneralCategory::Format => Some(NameError::Format(c)),
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
            Some(NameError::Separator(c))
        }
        _ => None,
    }
}

/// White space, and the characters that render as blank space although
/// they are letters or symbols: the Hangul fillers and the blank braille
/// pattern. A name may contain them inside, but neither begin nor end with
/// one, so no name is another name plus trailing blanks (which MySQL's PAD
/// SPACE collations would also take for the same name).
fn looks_blank(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{115F}' // HANGUL CHOSEONG FILLER
                | '\u{1160}' // HANGUL JUNGSEONG FILLER
                | '\u{3164}' // HANGUL FILLER
                | '\u{FFA0}' // HALFWIDTH HANGUL FILLER
                | '\u{2800}' // BRAILLE PATTERN BLANK
        )
}

/// NFKC, case fold, NFKC again (folding can denormalise), the TS #39
/// skeleton (which also drops default-ignorable code points), a second case
/// fold (some prototypes are capitals, e.g. Cherokee "Ꭺ" maps to "A"), then
/// white space collapsed and trimmed. An empty result means "looks blank".
fn fold(name: &str) -> String {
    let compat: String = name.nfkc().collect();
    let folded: String = caseless::default_case_fold_str(&compat).nfkc().collect();
    let skeleton: String = unicode_security::skeleton(&folded).collect();
    let skeleton = caseless::default_case_fold_str(&skeleton);
    let mut key = String::with_capacity(skeleton.len());
    for word in skeleton.split_whitespace() {
        if !key.is_empty() {
            key.push(' ');
        }
        key.push_str(word);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(name: &str) -> String {
        key(name).unwrap_or_else(|e| panic!("{name:?} refused: {e}"))
    }

    #[track_caller]
    fn same(names: &[&str]) {
        let first = k(names[0]);
        for n in &names[1..] {
            assert_eq!(
                k(n),
                first,
                "{n:?} should be the same name as {:?}",
                names[0]
            );
        }
    }

    #[test]
    fn case_width_and_script_lookalikes_are_one_name() {
        same(&[
            "alice",
            "Alice",
            "ALICE",
            "aLiCe",
            "\u{FF21}lice",                             // fullwidth A
            "\u{FF41}\u{FF4C}ice",                      // fullwidth a, l
            "\u{0410}lice",                             // Cyrillic capital A
            "\u{0430}lice",                             // Cyrillic small a
            "\u{0410}\u{04CF}\u{0456}\u{0441}\u{0435}", // all Cyrillic look-alikes
            "\u{13AA}lice",                             // Cherokee A (its prototype is a capital)
            "\u{1D41A}lice",                            // mathematical bold a
        ]);
        same(&["paypal", "𝔭𝒶ỿ𝕡𝕒ℓ"]);
        same(&["bob0", "BOBO", "bobo"]);
        same(&["rn", "m", "M"]);
    }

    #[test]
    fn canonical_and_compatibility_forms_are_one_name() {
        same(&["Café", "Cafe\u{301}", "CAFÉ", "CAFE\u{301}"]);
        same(&["ﬁsh", "fish"]); // ligature
        same(&["Straße", "STRASSE", "strasse", "STRAẞE"]); // full case folding
        same(&["ΣΟΦΟΣ", "σοφος", "σοφοσ"]); // final sigma
        same(&["x²", "x2"]);
    }

    #[test]
    fn runs_of_white_space_are_one_space() {
        same(&[
            "a b",
            "a  b",
            "a\u{3000}b",
            "a\u{A0}b",
            "a\u{2003}b",
            "a\u{2800}b",
        ]);
        assert_ne!(k("a b"), k("ab"));
    }

    #[test]
    fn ignorable_characters_inside_a_name_drop_out_of_the_key() {
        same(&["ab", "a\u{3164}b", "a\u{115F}b", "a\u{FFA0}b", "a\u{34F}b"]);
        // Variation selectors: an emoji with or without its selector.
        same(&["\u{2764}\u{FE0F}", "\u{2764}"]);
    }

    #[test]
    fn different_names_stay_different() {
        let names = [
            "alice",
            "alicia",
            "bob",
            "张三",
            "李四 🐉",
            "Ñandú",
            "مرحبا",
            "😀",
        ];
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(k(a), k(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn zero_width_bidi_bom_tags_and_other_format_characters_are_refused() {
        for c in [
            '\u{200B}',  // zero-width space
            '\u{200C}',  // zero-width non-joiner
            '\u{200D}',  // zero-width joiner
            '\u{2060}',  // word joiner
            '\u{200E}',  // left-to-right mark
            '\u{200F}',  // right-to-left mark
            '\u{202A}',  // left-to-right embedding
            '\u{202E}',  // right-to-left override
            '\u{2066}',  // left-to-right isolate
            '\u{2069}',  // pop directional isolate
            '\u{FEFF}',  // byte order mark
            '\u{E0001}', // language tag
            '\u{E0041}', // tag latin capital A
            '\u{00AD}',  // soft hyphen
            '\u{180E}',  // Mongolian vowel separator
        ] {
            for name in [
                format!("ali{c}ce"),
                format!("{c}alice"),
                format!("alice{c}"),
            ] {
                assert_eq!(key(&name), Err(NameError::Format(c)), "{name:?}");
            }
        }
    }

    #[test]
    fn control_characters_are_refused() {
        for c in [
            '\0', '\t', '\n', '\r', '\u{1B}', '\u{7F}', '\u{85}', '\u{9B}',
        ] {
            let name = format!("ali{c}ce");
            assert_eq!(key(&name), Err(NameError::Control(c)), "{name:?}");
        }
    }

    #[test]
    fn line_and_paragraph_separators_are_refused() {
        for c in ['\u{2028}', '\u{2029}'] {
            let name = format!("ali{c}ce");
            assert_eq!(key(&name), Err(NameError::Separator(c)), "{name:?}");
        }
    }

    #[test]
    fn names_that_look_blank_are_refused() {
        for name in [
            "",
            " ",
            "   ",
            "\u{3000}",
            "\u{A0}",
            "\u{3164}",
            "\u{115F}",
            "\u{1160}",
            "\u{FFA0}",
            "\u{2800}",
            "\u{3164}\u{3164}\u{3164}",
            "\u{2800} \u{3164}",
            "\u{FE0F}",       // a lone variation selector
            "\u{17B4}",       // Khmer inherent vowel, never drawn
            "\u{34F}\u{34F}", // combining grapheme joiners
        ] {
            assert_eq!(key(name), Err(NameError::Blank), "{name:?}");
        }
    }

    #[test]
    fn blank_characters_at_either_end_are_refused() {
        for name in [
            " alice",
            "alice ",
            "alice\u{3000}",
            "\u{A0}alice",
            "alice\u{3164}",
            "\u{115F}alice",
            "alice\u{FFA0}",
            "\u{2800}alice",
        ] {
            assert_eq!(key(name), Err(NameError::EdgeSpace), "{name:?}");
        }
    }

    #[test]
    fn ordinary_names_are_accepted() {
        for name in [
            "alice",
            "张三",
            "李四 🐉",
            "❤\u{FE0F} fan",
            "Ñandú",
            "e\u{301}",
            "مرحبا",
            "O'Brien-Smith",
            "x",
        ] {
            assert!(key(name).is_ok(), "{name:?}: {:?}", key(name));
        }
    }

    #[test]
    fn legacy_names_keep_their_look_reserved() {
        assert_eq!(legacy_key("Alice"), Some(k("alice")));
        assert_eq!(legacy_key("a\u{200B}lice"), Some(k("alice")));
        assert_eq!(legacy_key("\u{3164}"), None);
        assert_eq!(legacy_key(" "), None);
    }

    #[test]
    fn descriptions_refuse_controls_and_separators_only() {
        assert_eq!(check_text(""), Ok(()));
        assert_eq!(check_text("we write rust 🦀 — 描述"), Ok(()));
        assert_eq!(check_text("👩\u{200D}👩\u{200D}👧 family"), Ok(()));
        assert_eq!(check_text("a\nb"), Err('\n'));
        assert_eq!(check_text("\u{200D}a\tb"), Err('\t'));
        assert_eq!(check_text("\u{1B}[31mred"), Err('\u{1B}'));
        assert_eq!(check_text("a\u{2029}b"), Err('\u{2029}'));
    }

    #[test]
    fn errors_name_the_code_point() {
        let msg = key("a\u{200B}b").unwrap_err().to_string();
        assert!(msg.contains("U+200B"), "{msg}");
    }
}
