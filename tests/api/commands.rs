//! The binary's commands beside `serve`, as an operator types them:
//! `hash-key` and `completions`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_bankauth");

/// `bankauth hash-key` with `input` on its standard input.
pub fn hash_key(input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn hash_key_prints_the_sha256_of_the_key_without_its_newline() {
    const PASSWORD: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    for input in ["password", "password\n", "password\r\n"] {
        let output = hash_key(input.as_bytes());
        assert!(output.status.success(), "{input:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{PASSWORD}\n"),
            "{input:?}"
        );
        assert!(output.stderr.is_empty(), "{input:?}");
    }
    // Only one newline is the terminal's or the file's: the next is the key's.
    let output = hash_key(b"password\n\n");
    assert!(!output.status.success());
}

#[test]
fn hash_key_refuses_an_empty_key_and_never_prints_one() {
    for input in ["", "\n", "\r\n"] {
        let output = hash_key(input.as_bytes());
        assert!(!output.status.success(), "{input:?}");
        assert!(output.stdout.is_empty(), "{input:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("the API key is empty"), "{stderr}");
    }
    // A key no caller could send is refused, and the error does not echo it.
    let output = hash_key(b"s3cret-key \n");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("white space"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn completions_complete_every_command_in_each_shell() {
    let script = |shell: &str| {
        let output = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}");
        String::from_utf8(output.stdout).unwrap()
    };
    let bash = script("bash");
    assert!(bash.contains("complete -F _bankauth"), "{bash}");
    for command in [
        "serve",
        "demo",
        "check-config",
        "health",
        "hash-key",
        "completions",
    ] {
        assert!(bash.contains(command), "bash completion lacks {command}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(script(shell).contains("check-config"), "{shell}");
    }
    let unknown = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
}
