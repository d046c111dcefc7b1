//! API composition: a page that needs several modules' data calls their APIs concurrently, each
//! with a time limit, and joins the answers in the application. A source that fails or does not
//! answer in time leaves a hole the page can show, instead of failing the page.
//!
//! ```
//! # async fn demo() {
//! use std::time::Duration;
//! use moat::compose::{Composed, part};
//!
//! let limit = Duration::from_millis(200);
//! let (patient, bills) = tokio::join!(
//!     part("patients", limit, async { Ok::<_, std::io::Error>("Ada") }),
//!     part("billing", limit, async { Ok::<_, std::io::Error>(vec![120, 80]) }),
//! );
//! let composed = Composed::of(&[&patient, &bills]);
//! assert!(composed.complete());
//! assert_eq!(patient.value(), Some(&"Ada"));
//! # }
//! ```
//!
//! [`batched`] looks up many ids in a few calls (deduplicated, in chunks run concurrently)
//! instead of one call per row.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Why a source is missing from a composition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Missing {
    /// It did not answer within its time limit.
    TimedOut {
        /// The limit, in milliseconds.
        after_ms: u64,
    },
    /// It answered with an error.
    Failed {
        /// The error, as text.
        error: String,
    },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut { after_ms } => write!(f, "no answer within {after_ms} ms"),
            Self::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}

/// One source's answer.
#[derive(Debug)]
pub struct Part<T> {
    /// The source's name (a module, an endpoint).
    pub source: &'static str,
    /// Its value, or why it is missing.
    pub outcome: Result<T, Missing>,
    /// How long it took (up to the limit).
    pub elapsed: Duration,
}

impl<T> Part<T> {
    /// The value, when the source answered.
    pub fn value(&self) -> Option<&T> {
        self.outcome.as_ref().ok()
    }

    /// The value, when the source answered.
    pub fn into_value(self) -> Option<T> {
        self.outcome.ok()
    }
}

/// What [`Composed`] needs of a part, whatever its value's type.
pub trait AnyPart {
    /// The source's name.
    fn source(&self) -> &'static str;
    /// Why it is missing, if it is.
    fn missing(&self) -> Option<&Missing>;
}

impl<T> AnyPart for Part<T> {
    fn source(&self) -> &'static str {
        self.source
    }
    fn missing(&self) -> Option<&Missing> {
        self.outcome.as_ref().err()
    }
}

/// Runs `future` as source `source`, giving it at most `limit`: a source that hangs is dropped
/// (its future cancelled) when the limit passes.
pub async fn part<T, E, F>(source: &'static str, limit: Duration, future: F) -> Part<T>
where
    F: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    let started = Instant::now();
    let outcome = match tokio::time::timeout(limit, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Missing::Failed { error: error.to_string() }),
        Err(_) => Err(Missing::TimedOut { after_ms: limit.as_millis() as u64 }),
    };
    if let Err(missing) = &outcome {
        tracing::warn!(source, %missing, "a source of a composed read is missing");
    }
    Part { source, outcome, elapsed: started.elapsed() }
}

/// Which sources of a composition answered and which did not.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Composed {
    /// The sources that answered.
    pub answered: Vec<&'static str>,
    /// The sources that did not, and why.
    pub missing: Vec<(&'static str, Missing)>,
}

impl Composed {
    /// Gathers the parts' outcomes.
    pub fn of(parts: &[&dyn AnyPart]) -> Self {
        let mut composed = Self::default();
        for part in parts {
            match part.missing() {
                None => composed.answered.push(part.source()),
                Some(missing) => composed.missing.push((part.source(), missing.clone())),
            }
        }
        composed
    }

    /// Whether every source answered.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Looks `ids` up through `lookup`, which answers many ids at once: duplicates are asked once,
/// the ids go in chunks of at most `chunk` (one call each, all concurrently), and the whole
/// lookup gets at most `limit`. A chunk that fails fails the part (a page shows the source as
/// missing rather than half its rows).
pub async fn batched<K, V, E, F, Fut>(
    source: &'static str,
    limit: Duration,
    ids: impl IntoIterator<Item = K>,
    chunk: usize,
    lookup: F,
) -> Part<HashMap<K, V>>
where
    K: Ord + Hash + Clone,
    F: Fn(Vec<K>) -> Fut,
    Fut: Future<Output = Result<Vec<(K, V)>, E>>,
    E: fmt::Display,
{
    let unique: BTreeSet<K> = ids.into_iter().collect();
    let unique: Vec<K> = unique.into_iter().collect();
    let calls = unique.chunks(chunk.max(1)).map(|c| lookup(c.to_vec())).collect::<Vec<_>>();
    part(source, limit, async move {
        let mut found = HashMap::with_capacity(unique.len());
        for answer in futures::future::join_all(calls).await {
            found.extend(answer?);
        }
        Ok::<_, E>(found)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hanging_source_leaves_a_hole_within_its_limit() {
        let limit = Duration::from_millis(100);
        let started = Instant::now();
        let (fast, hanging, failing) = tokio::join!(
            part("patients", limit, async { Ok::<_, String>(7) }),
            part("billing", limit, async {
                std::future::pending::<()>().await;
                Ok::<u32, String>(0)
            }),
            part("lab", limit, async { Err::<u32, _>("connection refused".to_owned()) }),
        );
        let elapsed = started.elapsed();
        assert!(elapsed < limit + Duration::from_millis(50), "took {elapsed:?}");
        assert_eq!(fast.value(), Some(&7));
        let composed = Composed::of(&[&fast, &hanging, &failing]);
        assert_eq!(composed.answered, ["patients"]);
        assert_eq!(
            composed.missing,
            [
                ("billing", Missing::TimedOut { after_ms: 100 }),
                ("lab", Missing::Failed { error: "connection refused".into() })
            ]
        );
        assert!(!composed.complete());
    }

    #[tokio::test]
    async fn batched_lookups_ask_each_id_once_in_chunks() {
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        let found = batched("customers", Duration::from_secs(1), [3, 1, 2, 3, 1, 5, 4], 2, move |chunk: Vec<i64>| {
            let seen = seen.clone();
            async move {
                seen.lock().map_err(|e| e.to_string())?.push(chunk.clone());
                Ok::<_, String>(chunk.into_iter().map(|id| (id, id * 10)).collect())
            }
        })
        .await;
        let found = found.into_value().expect("answered");
        assert_eq!(found.len(), 5);
        assert_eq!(found[&4], 40);
        let calls = calls.lock().expect("not poisoned").clone();
        assert_eq!(calls, [vec![1, 2], vec![3, 4], vec![5]]);
    }
}
