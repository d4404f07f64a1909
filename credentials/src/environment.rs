//! Where sources read environment variables: the process environment, or a fixed set (tests, tools that
//! inspect another environment such as a pod's).

use std::collections::BTreeMap;
use std::sync::Arc;

/// A view of environment variables. The default reads the process environment at each lookup.
#[derive(Clone, Default)]
pub struct Environment(Option<Arc<BTreeMap<String, String>>>);

impl Environment {
    /// The process environment, read at each lookup.
    pub fn process() -> Self {
        Self(None)
    }

    /// Exactly these variables and no others.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(Some(Arc::new(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )))
    }

    /// The value of `name` when it is set and not blank.
    pub fn get(&self, name: &str) -> Option<String> {
        let value = match &self.0 {
            None => std::env::var(name).ok(),
            Some(vars) => vars.get(name).cloned(),
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// True when this is a fixed set rather than the process environment.
    pub(crate) fn is_fixed(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Debug for Environment {
    /// Names only: values may be secrets (`PGPASSWORD`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Environment(process)"),
            Some(vars) => f
                .debug_tuple("Environment")
                .field(&vars.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}
