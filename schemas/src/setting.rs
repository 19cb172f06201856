//! The one error type of a setting with an unusable value, shared by every crate's config
//! validation (cdc, processor, replay, the `rainbow` binary).

/// A setting with an unusable value: its key, the value as given, and what was expected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid setting `{key}` = {value:?}: expected {expected}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// `Ok` if `ok`, else the setting `key` with `value` and what was `expected`.
pub fn check(
    ok: bool,
    key: &'static str,
    value: impl ToString,
    expected: &'static str,
) -> Result<(), InvalidSetting> {
    if ok {
        Ok(())
    } else {
        Err(InvalidSetting { key, value: value.to_string(), expected })
    }
}
