//! Throwaway certificate authorities (openssl) for TLS and mutual-TLS tests.

use std::process::Command;

/// A throwaway certificate authority made with openssl: `{name}.pem` and
/// `{name}.key` in `dir`, and the certificates it issues beside them.
pub struct TestCa {
    dir: std::path::PathBuf,
    name: String,
}

impl TestCa {
    pub fn new(dir: &std::path::Path, name: &str) -> Self {
        let ca = Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
        };
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        ca.openssl(&[
            "req",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=bankauth test CA",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &key,
            "-out",
            &pem,
        ]);
        ca
    }

    /// Issues `{stem}.pem` and `{stem}.key` for a subject alternative name
    /// such as `IP:127.0.0.1` or `DNS:payments.internal`.
    pub fn issue(&self, stem: &str, san: &str) {
        let (pem, key, csr, ext) = (
            format!("{stem}.pem"),
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.ext"),
        );
        self.openssl(&[
            "req",
            "-nodes",
            "-subj",
            &format!("/CN={stem}"),
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        std::fs::write(self.dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
        let (ca_pem, ca_key) = (format!("{}.pem", self.name), format!("{}.key", self.name));
        self.openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
    }

    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.join(file)
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .expect("openssl (`apt-get install openssl`)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
