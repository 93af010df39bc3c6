//! Access policies: CEL rules compiled once when the config loads (`compile`), the per-request
//! variables borrowed rather than built (`vars`), and the decision: the global policy, then the
//! policy of the longest configured repository name that is a path prefix of the request's.

pub mod compile;
pub mod vars;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cel::{Context, Env, Program, Value};

use crate::action::Action;
use crate::config::{AccessPolicyConfig, Config, PolicyDefault};
pub use compile::RuleError;
pub use vars::{IdentityVal, OidcFields, Peer, RequestVal, Vars};

/// One compiled rule and its text (for logs).
pub struct Rule {
    pub source: String,
    program: Program,
    /// Set once the rule has failed to evaluate and that was logged at warn.
    warned: AtomicBool,
}

/// `default` plus rules; the first true rule flips the default.
pub struct Policy {
    /// Where it is configured: `global.access_policy` or `repository."<name>".access_policy`.
    pub table: String,
    pub default: PolicyDefault,
    pub rules: Vec<Rule>,
}

/// Every policy of the config, ready to decide.
pub struct AccessControl {
    env: Arc<Env>,
    global: Option<Policy>,
    /// Repository policies, longest name first so the first prefix match is the most specific.
    repositories: Vec<(String, Policy)>,
}

/// Why a policy decided as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No policy applies to the request.
    Unrestricted,
    /// No rule was true.
    Default,
    /// This rule was true.
    Rule(usize),
    /// This rule failed or was not boolean; under `default = "allow"` that denies.
    Failed(usize),
}

/// The outcome, with the policy and rule that decided it.
pub struct Decision<'p> {
    pub allowed: bool,
    pub policy: Option<&'p Policy>,
    pub reason: Reason,
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        match (self.policy, self.reason) {
            (None, _) | (_, Reason::Unrestricted) => write!(f, "{verdict}: no policy applies"),
            (Some(p), Reason::Default) => {
                write!(f, "{verdict} by {}: default (no rule was true)", p.table)
            }
            (Some(p), Reason::Rule(i)) => {
                write!(
                    f,
                    "{verdict} by {}.rules[{i}] `{}`",
                    p.table, p.rules[i].source
                )
            }
            (Some(p), Reason::Failed(i)) => write!(
                f,
                "{verdict} by {}.rules[{i}] `{}`: it failed or was not boolean",
                p.table, p.rules[i].source
            ),
        }
    }
}

impl Decision<'_> {
    /// What decided, for a client's error message: the table and rule number, never the rule's
    /// text (which may say more about the site than a refused client should learn).
    pub fn origin(&self) -> String {
        match (self.policy, self.reason) {
            (None, _) | (_, Reason::Unrestricted) => "no policy applies".to_owned(),
            (Some(p), Reason::Default) => format!("{}: no rule allowed it", p.table),
            (Some(p), Reason::Rule(i)) => format!("{}.rules[{i}]", p.table),
            (Some(p), Reason::Failed(i)) => format!("{}.rules[{i}] (it failed)", p.table),
        }
    }
}

impl Policy {
    fn compile(
        env: &Env,
        table: String,
        cfg: &AccessPolicyConfig,
        known: &compile::Known<'_>,
    ) -> Result<Policy, RuleError> {
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(i, source)| {
                Ok(Rule {
                    source: source.clone(),
                    program: compile::compile(env, &table, i, source, known)?,
                    warned: AtomicBool::new(false),
                })
            })
            .collect::<Result<_, RuleError>>()?;
        Ok(Policy {
            table,
            default: cfg.default,
            rules,
        })
    }

    /// Hot path: the rules in order until one flips the default.
    fn decide(&self, ctx: &Context<'_, '_>) -> Decision<'_> {
        let allow_by_default = self.default == PolicyDefault::Allow;
        for (i, rule) in self.rules.iter().enumerate() {
            match rule.program.execute(ctx) {
                Ok(Value::Bool(true)) => {
                    return Decision {
                        allowed: !allow_by_default,
                        policy: Some(self),
                        reason: Reason::Rule(i),
                    };
                }
                Ok(Value::Bool(false)) => {}
                outcome => {
                    self.failed(i, &outcome);
                    // Fail closed: a broken rule never allows, and under "allow" it denies.
                    if allow_by_default {
                        return Decision {
                            allowed: false,
                            policy: Some(self),
                            reason: Reason::Failed(i),
                        };
                    }
                }
            }
        }
        Decision {
            allowed: allow_by_default,
            policy: Some(self),
            reason: Reason::Default,
        }
    }

    /// Log a failing rule: at warn the first time, then at debug (it may fail on every request).
    fn failed(&self, i: usize, outcome: &cel::ResolveResult) {
        let what = match outcome {
            Ok(v) => format!("returned {v:?}, not a boolean"),
            Err(e) => e.to_string(),
        };
        let rule = &self.rules[i];
        if rule.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: "wharf::access", "{}.rules[{i}] `{}`: {what}", self.table, rule.source);
        } else {
            tracing::warn!(target: "wharf::access", "{}.rules[{i}] `{}`: {what} (counts as deny; logged once, then at debug)", self.table, rule.source);
        }
    }
}

impl AccessControl {
    /// Compile every policy of the config; the first bad rule is an error naming its place.
    pub fn from_config(cfg: &Config) -> Result<AccessControl, RuleError> {
        let env = compile::environment();
        let listeners = compile::Known {
            listeners: std::iter::once("main")
                .chain(cfg.server.listener.iter().map(|l| l.name.as_str()))
                .chain(cfg.server.admin.as_ref().map(|_| "admin"))
                .collect(),
            upstreams: cfg.upstream.iter().map(|u| u.name.as_str()).collect(),
            providers: cfg.auth.oidc.keys().map(String::as_str).collect(),
        };
        let global = cfg
            .global
            .access_policy
            .as_ref()
            .map(|p| Policy::compile(&env, "global.access_policy".into(), p, &listeners))
            .transpose()?;
        let mut repositories = Vec::new();
        for (name, repo) in &cfg.repository {
            if let Some(p) = &repo.access_policy {
                let table = format!("repository.{name:?}.access_policy");
                repositories.push((name.clone(), Policy::compile(&env, table, p, &listeners)?));
            }
        }
        repositories.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        Ok(AccessControl {
            env,
            global,
            repositories,
        })
    }

    /// True when no policy is configured: every request is allowed (the development default).
    pub fn is_open(&self) -> bool {
        self.global.is_none() && self.repositories.is_empty()
    }

    /// The repository policy for `repo`: the longest configured name equal to it or a path
    /// prefix of it (`dev` covers `dev` and `dev/app`, not `devops`).
    pub fn repository_policy(&self, repo: &str) -> Option<&Policy> {
        self.repositories.iter().find_map(|(name, policy)| {
            let covers = repo
                .strip_prefix(name.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            covers.then_some(policy)
        })
    }

    /// Decide `action`, asked on `listener`, for `identity`: it must pass the global policy and
    /// then the repository's.
    pub fn decide<'p>(
        &'p self,
        identity: IdentityVal<'_>,
        action: &Action,
        listener: &str,
    ) -> Decision<'p> {
        self.decide_through(identity, action, listener, None)
    }

    /// `decide`, for a request the mirror of `upstream` serves (`request.upstream`).
    pub fn decide_through<'p>(
        &'p self,
        identity: IdentityVal<'_>,
        action: &Action,
        listener: &str,
        upstream: Option<&str>,
    ) -> Decision<'p> {
        let request = RequestVal::new(action, listener).through(upstream);
        let repo = action.repository().map(|r| r.as_str());
        let vars = Vars { identity, request };
        // One context (no allocation) for both policies; the resolver serves the variables.
        let mut ctx = Context::with_env(Arc::clone(&self.env));
        ctx.set_variable_resolver(&vars);
        let mut decision = Decision {
            allowed: true,
            policy: None,
            reason: Reason::Unrestricted,
        };
        if let Some(global) = &self.global {
            decision = global.decide(&ctx);
            if !decision.allowed {
                return decision;
            }
        }
        if let Some(policy) = repo.and_then(|r| self.repository_policy(r)) {
            decision = policy.decide(&ctx);
        }
        decision
    }

    /// Decide `action`, then, for every tag it creates, moves or removes (`request.tags`), the same
    /// action as if that tag were its path reference: a `?tag=release` or a delete by digest that
    /// takes `release` with it is allowed only where `PUT`/`DELETE …/manifests/release` would be, so
    /// rules written against `request.reference` hold. The first denial decides.
    pub fn decide_with_tags<'p, 'i>(
        &'p self,
        identity: impl Fn() -> IdentityVal<'i>,
        action: &Action,
        listener: &str,
        upstream: Option<&str>,
    ) -> Decision<'p> {
        let decision = self.decide_through(identity(), action, listener, upstream);
        if !decision.allowed {
            return decision;
        }
        for tag in action.tags() {
            let Some(as_tag) = action.as_tag(tag).filter(|a| a != action) else {
                continue;
            };
            let d = self.decide_through(identity(), &as_tag, listener, upstream);
            if !d.allowed {
                return d;
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests;
