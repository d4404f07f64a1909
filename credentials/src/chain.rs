//! `credential.kind = "auto"`: [`ChainSource`] tries the kinds of `credential.chain` in order and keeps the
//! first that gives a token, as the Azure SDKs' `DefaultAzureCredential` (`ChainedTokenCredential`) does; kept
//! apart from the registry, which only knows kinds.

use std::fmt;
use std::sync::Arc;

use crate::registry::AUTO;
use crate::{
    CredentialConfig, CredentialError, SourceContext, SourceInfo, SourceRegistry, TokenSource,
};

/// What became of one source of `auto`'s chain.
#[derive(Debug, Clone)]
pub enum ChainOutcome {
    /// Its inputs are there and it has not been asked yet (`why`: which inputs).
    Present {
        /// Which inputs make it worth trying.
        why: String,
    },
    /// It gave a token and is the one in use.
    Chosen {
        /// Which inputs made it available.
        why: String,
    },
    /// Its inputs are absent, or it said it cannot work here (no endpoint, not logged in): `auto` moved on.
    Skipped {
        /// Why, with the variable or key it lacks.
        reason: String,
    },
    /// It was meant to work and failed (Entra refused it, an input is broken): the chain stopped here,
    /// because this is the error to fix.
    Failed {
        /// Its error.
        error: CredentialError,
    },
    /// Not tried: a source before it was chosen or stopped the chain.
    NotTried,
    /// Being asked right now (recorded before each attempt, so that a request cut short by its deadline
    /// still shows which source it was waiting for).
    Trying {
        /// Which inputs made it worth trying.
        why: String,
    },
}

/// One source of `auto`'s chain and what became of it.
#[derive(Debug, Clone)]
pub struct ChainStep {
    /// The source's kind.
    pub kind: String,
    /// What became of it.
    pub outcome: ChainOutcome,
}

/// `credential.kind = "auto"`: tries the kinds of `credential.chain` in order, as the Azure SDKs'
/// `DefaultAzureCredential` does, and keeps the first that gives a token.
///
/// A source whose inputs are absent is skipped without being built. A source that reports it cannot
/// work here ([`CredentialError::is_unavailable`]: `az` not installed or not logged in, no managed identity
/// endpoint) is skipped too. Any other failure stops the chain with that source's error: it was meant to
/// work, and falling through to, say, a developer's `az` login would hide what to fix. Once a source gave a
/// token, it alone is asked from then on.
pub struct ChainSource {
    registry: SourceRegistry,
    config: CredentialConfig,
    ctx: SourceContext,
    kinds: Vec<String>,
    chosen: tokio::sync::Mutex<Option<(Arc<dyn TokenSource>, String)>>,
    steps: std::sync::Mutex<Vec<ChainStep>>,
}

impl fmt::Debug for ChainSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainSource")
            .field("kinds", &self.kinds)
            .field("steps", &self.steps())
            .finish_non_exhaustive()
    }
}

/// The one error when no source of the chain works: every source and its reason.
fn none_works(steps: &[ChainStep]) -> CredentialError {
    let reasons: Vec<String> = steps
        .iter()
        .map(|step| match &step.outcome {
            ChainOutcome::Skipped { reason } => format!("{}: {reason}", step.kind),
            ChainOutcome::Failed { error } => format!("{}: {}", step.kind, error.problem()),
            ChainOutcome::Present { why }
            | ChainOutcome::Chosen { why }
            | ChainOutcome::Trying { why } => format!("{}: {why}", step.kind),
            ChainOutcome::NotTried => format!("{}: not tried", step.kind),
        })
        .collect();
    CredentialError::configuration(
        AUTO,
        format!(
            "found no token source that works here ({})",
            reasons.join("; ")
        ),
        "give one source the input it lacks (above), or set credential.kind to the source you mean so that \
         pgwi says exactly what it needs; credential.chain sets which sources auto tries",
    )
}

impl ChainSource {
    /// The chain of `kinds`, with each step's presence recorded; fails at once when no kind has its inputs.
    pub(crate) fn new(
        registry: SourceRegistry,
        config: CredentialConfig,
        ctx: SourceContext,
        kinds: Vec<String>,
    ) -> Result<Self, CredentialError> {
        let chain = Self {
            registry,
            config,
            ctx,
            kinds,
            chosen: tokio::sync::Mutex::new(None),
            steps: std::sync::Mutex::new(Vec::new()),
        };
        let steps = chain.present_steps();
        if steps
            .iter()
            .all(|step| matches!(step.outcome, ChainOutcome::Skipped { .. }))
        {
            return Err(none_works(&steps));
        }
        chain.remember_steps(steps);
        Ok(chain)
    }

    /// The kinds tried, in order.
    pub fn kinds(&self) -> &[String] {
        &self.kinds
    }

    /// What became of each source at the last resolution (before the first token: whether its inputs are
    /// there).
    pub fn steps(&self) -> Vec<ChainStep> {
        self.steps.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Keeps `steps` as what [`Self::steps`] reports: the resolution in progress, or the last one.
    fn remember_steps(&self, steps: Vec<ChainStep>) {
        if let Ok(mut current) = self.steps.lock() {
            *current = steps;
        }
    }

    /// Each kind with whether its inputs are present, without building or asking anything.
    fn present_steps(&self) -> Vec<ChainStep> {
        present_steps(&self.registry, &self.kinds, &self.config, &self.ctx)
    }

    /// The kind being asked right now, while the chain resolves.
    fn trying(&self) -> Option<String> {
        self.steps()
            .into_iter()
            .find(|step| matches!(step.outcome, ChainOutcome::Trying { .. }))
            .map(|step| step.kind)
    }

    /// Builds `kind`'s source and asks it for a token, within what is left of the chain's deadline: a
    /// source that hangs fails here, by name, instead of the whole request failing as `auto`.
    async fn attempt(
        &self,
        kind: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(Arc<dyn TokenSource>, crate::Token), CredentialError> {
        let source = self.registry.build_kind(kind, &self.config, &self.ctx)?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout_at(deadline, source.token()).await {
            Ok(token) => token.map(|token| (source, token)),
            // The source's request future is dropped here, which ends what it started (az's process
            // group, an HTTP request).
            Err(_) => Err(CredentialError::new(
                crate::ErrorKind::Timeout,
                kind.to_owned(),
                format!(
                    "no answer within the {:.1}s left of credential.fetch_timeout_secs ({}s), the deadline of \
                     auto's whole chain",
                    left.as_secs_f64(),
                    self.config.fetch_timeout_secs
                ),
                format!(
                    "find out what {kind} waits for (pgwi doctor; for az-cli or azure-developer-cli run the \
                     tool's token command by hand); raise credential.fetch_timeout_secs if it is merely slow, \
                     or leave {kind} out of credential.chain"
                ),
            )),
        }
    }

    /// Tries the sources in order; see the type's documentation. Each step is recorded before it is tried,
    /// and all of them share one deadline, just inside the cache's `fetch_timeout_secs`.
    async fn resolve(
        &self,
    ) -> Result<(Arc<dyn TokenSource>, String, crate::Token), CredentialError> {
        let deadline = tokio::time::Instant::now()
            + crate::cache::inner_deadline(std::time::Duration::from_secs(
                self.config.fetch_timeout_secs,
            ));
        let mut steps = self.present_steps();
        let mut result = None;
        for index in 0..steps.len() {
            if result.is_some() {
                // Once one source decided the outcome, the ones after it were never asked.
                if matches!(steps[index].outcome, ChainOutcome::Present { .. }) {
                    steps[index].outcome = ChainOutcome::NotTried;
                }
                continue;
            }
            result = self.try_step(&mut steps, index, deadline).await;
        }
        let outcome = match result {
            Some(Ok(chosen)) => Ok(chosen),
            Some(Err(error)) => Err(stopped_by(&error, &steps)),
            None => Err(none_works(&steps)),
        };
        self.remember_steps(steps);
        outcome
    }

    /// Asks the source of `steps[index]` if its inputs are present, recording it as `Trying` first and its
    /// outcome after. `None`: it was skipped, and the chain goes on.
    async fn try_step(
        &self,
        steps: &mut [ChainStep],
        index: usize,
        deadline: tokio::time::Instant,
    ) -> Option<Result<(Arc<dyn TokenSource>, String, crate::Token), CredentialError>> {
        let ChainOutcome::Present { why } = &steps[index].outcome else {
            return None;
        };
        let why = why.clone();
        let kind = steps[index].kind.clone();
        steps[index].outcome = ChainOutcome::Trying { why: why.clone() };
        self.remember_steps(steps.to_vec());
        let (outcome, result) = match self.attempt(&kind, deadline).await {
            Ok((source, token)) => (
                ChainOutcome::Chosen { why: why.clone() },
                Some(Ok((source, why, token))),
            ),
            Err(error) if error.is_unavailable() => (
                ChainOutcome::Skipped {
                    reason: error.problem().to_owned(),
                },
                None,
            ),
            Err(error) => (
                ChainOutcome::Failed {
                    error: error.clone(),
                },
                Some(Err(error)),
            ),
        };
        steps[index].outcome = outcome;
        result
    }
}

/// The error of the source that stopped the chain, saying which sources `auto` skipped before it.
fn stopped_by(error: &CredentialError, steps: &[ChainStep]) -> CredentialError {
    let before: Vec<String> = steps
        .iter()
        .take_while(|step| !matches!(step.outcome, ChainOutcome::Failed { .. }))
        .map(|step| step.kind.clone())
        .collect();
    let problem = if before.is_empty() {
        format!(
            "{} (credential.kind = auto tried it first)",
            error.problem()
        )
    } else {
        format!(
            "{} (credential.kind = auto skipped {} before it)",
            error.problem(),
            before.join(", ")
        )
    };
    let stopped = CredentialError::new(error.kind(), error.source_name(), problem, error.fix());
    match error.code() {
        Some(code) => stopped.with_code(code),
        None => stopped,
    }
}

#[async_trait::async_trait]
impl TokenSource for ChainSource {
    async fn token(&self) -> Result<crate::Token, CredentialError> {
        let mut chosen = self.chosen.lock().await;
        if let Some((source, _)) = chosen.as_ref() {
            let source = source.clone();
            drop(chosen);
            return source.token().await;
        }
        let (source, why, token) = self.resolve().await?;
        let skipped: Vec<String> = self
            .steps()
            .iter()
            .filter_map(|step| match &step.outcome {
                ChainOutcome::Skipped { reason } => Some(format!("{} ({reason})", step.kind)),
                _ => None,
            })
            .collect();
        tracing::info!(
            source = %source,
            reason = %why,
            skipped = %skipped.join("; "),
            "credential.kind = auto chose {}; name the kind explicitly in production",
            source.info().kind
        );
        *chosen = Some((source, why));
        Ok(token)
    }

    fn info(&self) -> SourceInfo {
        match self.chosen.try_lock().ok().and_then(|c| c.clone()) {
            Some((source, why)) => source.info().with("chosen_by", format!("auto: {why}")),
            None => {
                let info = SourceInfo::new(AUTO).with("chain", self.kinds.join(","));
                match self.trying() {
                    Some(kind) => info.with("trying", kind),
                    None => info,
                }
            }
        }
    }
}

/// Each of `kinds` with whether its inputs are present ([`ChainOutcome::Present`] or
/// [`ChainOutcome::Skipped`], from [`SourceRegistry::presence`]), without building or asking anything.
pub fn present_steps(
    registry: &SourceRegistry,
    kinds: &[String],
    config: &CredentialConfig,
    ctx: &SourceContext,
) -> Vec<ChainStep> {
    kinds
        .iter()
        .map(|kind| ChainStep {
            kind: kind.clone(),
            outcome: match registry.presence(kind, config, ctx) {
                Ok(why) => ChainOutcome::Present { why },
                Err(reason) => ChainOutcome::Skipped { reason },
            },
        })
        .collect()
}
