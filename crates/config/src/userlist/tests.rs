//! Tests for auth_file parsing: secret kinds, quoting, comments, malformed lines.

use super::*;

const MD5: &str = "md545f2603610af569b6155c45067268c6b";
const SCRAM: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5c3RvcmVka2V5c3Q=:c2VydmVya2V5c2VydmVya2V5c2U=";

fn parse(text: &str) -> Result<UserList, ConfigError> {
    UserList::parse(text, Path::new("/etc/pgmux/userlist.txt"))
}

fn err(text: &str) -> ConfigError {
    parse(text).expect_err("should be rejected")
}

#[test]
fn secret_kinds() {
    let text = format!("\"alice\" \"secret\"\n\"admin\" \"{MD5}\"\n\"bob\" \"{SCRAM}\"\n\"carol\" \"md5short\"\n");
    let u = parse(&text).unwrap();
    assert_eq!(u.len(), 4);
    assert!(!u.is_empty());
    assert_eq!(u.get("alice"), Some(&Secret::Plain("secret".into())));
    assert_eq!(u.get("admin"), Some(&Secret::Md5(MD5.into())));
    assert_eq!(u.get("bob"), Some(&Secret::Scram(SCRAM.into())));
    assert_eq!(u.get("carol"), Some(&Secret::Plain("md5short".into())));
    assert_eq!(u.get("dave"), None);
    assert_eq!(u.get("Alice"), None);
}

#[test]
fn md5_hex_is_lowercased() {
    let u = parse("\"a\" \"md545F2603610AF569B6155C45067268C6B\"").unwrap();
    assert_eq!(u.get("a"), Some(&Secret::Md5(MD5.into())));
}

#[test]
fn escaped_quotes_and_spaces() {
    let u = parse("\"we\"\"ird user\" \"pa ss\"\"word\"\"\"\n").unwrap();
    assert_eq!(u.get("we\"ird user"), Some(&Secret::Plain("pa ss\"word\"".into())));
    let u = parse("\"e\" \"\"").unwrap();
    assert_eq!(u.get("e"), Some(&Secret::Plain(String::new())));
}

#[test]
fn trailing_fields_comments_and_blank_lines() {
    let text = "; comment\n# also a comment\n\n   \n  ; indented comment\r\n\
                \"a\" \"x\" \"ignored\" third field\r\n\t\"b\"\t\"y\"\n";
    let u = parse(text).unwrap();
    assert_eq!(u.len(), 2);
    assert_eq!(u.get("a"), Some(&Secret::Plain("x".into())));
    assert_eq!(u.get("b"), Some(&Secret::Plain("y".into())));
    assert!(parse("").unwrap().is_empty());
}

#[test]
fn later_duplicate_wins() {
    let u = parse("\"a\" \"one\"\n\"a\" \"two\"\n").unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u.get("a"), Some(&Secret::Plain("two".into())));
}

#[test]
fn malformed_lines_name_file_and_line() {
    let cases = [
        ("\"a\" \"x\"\nalice secret\n", 2, "user name: expected a double-quoted field"),
        ("\"a\" \"x\"\n\n\"bob\n", 3, "user name: missing closing double quote"),
        ("\"bob\"\n", 1, "missing secret for user \"bob\""),
        ("\"bob\"   \r\n", 1, "missing secret for user \"bob\""),
        ("\"bob\" secret\n", 1, "secret of user \"bob\": expected a double-quoted field"),
        ("\"bob\" \"secret\n", 1, "secret of user \"bob\": missing closing double quote"),
        ("\"\" \"secret\"\n", 1, "empty user name"),
        ("\"b\" \"SCRAM-SHA-256$x\"", 1, "malformed SCRAM secret"),
        ("\"b\" \"SCRAM-SHA-256$0:c2E=$a:b\"", 1, "iterations must be a positive integer"),
        ("\"b\" \"SCRAM-SHA-256$4096:c2E=$a\"", 1, "expected <storedkey>:<serverkey>"),
        ("\"b\" \"SCRAM-SHA-256$4096:c2E=$a:\"", 1, "non-empty base64"),
    ];
    for (text, line, message) in cases {
        let e = err(text);
        assert_eq!(e.file, Path::new("/etc/pgmux/userlist.txt"));
        assert_eq!(e.key, None);
        let prefix = format!("line {line}: ");
        assert!(e.message.starts_with(&prefix), "{text:?}: {e}");
        assert!(e.message.contains(message), "{text:?}: {e} lacks {message:?}");
        assert!(e.to_string().starts_with(&format!("/etc/pgmux/userlist.txt: line {line}: ")));
    }
}

#[test]
fn garbage_does_not_panic() {
    for text in ["\"", "\"\"\"", "\u{0}", "\"é\" \"ü\" \"", "\"a\"\"", "\"x\" \"SCRAM-SHA-256$\""] {
        let _ = parse(text);
    }
}

#[test]
fn load_reads_files() {
    let dir = std::env::temp_dir().join(format!("pgmux-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("userlist.txt");
    std::fs::write(&path, "\"u\" \"p\"\n").unwrap();
    let u = UserList::load(&path).unwrap();
    assert_eq!(u.get("u"), Some(&Secret::Plain("p".into())));
    std::fs::remove_dir_all(&dir).unwrap();

    let e = UserList::load(&path).unwrap_err();
    assert_eq!(e.file, path);
    assert!(e.message.starts_with("cannot read file:"), "{e}");
}
