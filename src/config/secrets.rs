//! Secrets are named in the configuration, never written in it: each is
//! read from a file or an environment variable when it is needed.

use std::path::PathBuf;

use secrecy::SecretString;

use super::ConfigError;

/// A secret from exactly one of: memory (demo, tests), a file, an
/// environment variable. Errors name `{key}.{name}_file` or `_env`.
pub fn resolve_secret(
    key: &str,
    name: &str,
    in_memory: &Option<SecretString>,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<SecretString, ConfigError> {
    match (in_memory, file, env) {
        (Some(secret), None, None) => Ok(secret.clone()),
        (None, Some(path), None) => std::fs::read_to_string(path)
            .map(SecretString::from)
            .map_err(|e| {
                ConfigError::invalid(
                    format!("{key}.{name}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            }),
        (None, None, Some(var)) => std::env::var(var).map(SecretString::from).map_err(|_| {
            ConfigError::invalid(
                format!("{key}.{name}_env"),
                format!("environment variable {var} is not set"),
            )
        }),
        _ => Err(ConfigError::invalid(
            key,
            format!("set exactly one of {name}_file and {name}_env"),
        )),
    }
}
