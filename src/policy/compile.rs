//! Compiling rules when the config loads: the CEL environment (the standard library plus
//! `list.contains(x)` and a `matches` whose regexes are compiled once per thread), parsing, and a
//! walk over each rule that rejects unknown variables, fields and functions and invalid regexes
//! with their position, so that nothing fails for a reason a startup check could have caught.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, LiteralValue, SourceInfo};
use cel::common::types::{self, CelBool, CelString};
use cel::common::value::CowVal;
use cel::{Env, ExecutionError, IdedExpr, Program};

use super::vars::{CERTIFICATE_FIELDS, IDENTITY_FIELDS, OIDC_FIELDS, REQUEST_FIELDS};

/// A rule that cannot be used, located in the config.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {table}.rules[{index}]: line {line}, column {column}: {message}")]
pub struct RuleError {
    /// `global.access_policy` or `repository."<name>".access_policy`.
    pub table: String,
    pub index: usize,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Functions a rule may call besides operators: the CEL standard library as built here.
const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "optional.none",
    "optional.of",
    "optional.ofNonZeroValue",
    "hasValue",
    "value",
    "or",
    "orValue",
];

/// Regexes compiled per worker thread, so `matches` never recompiles a pattern per request.
/// Patterns from data rather than rule text could grow it without bound: past this many, a
/// pattern is compiled for its one use.
pub const REGEX_CACHE_MAX: usize = 256;

thread_local! {
    static REGEXES: RefCell<HashMap<String, regex::Regex>> = RefCell::new(HashMap::new());
}

/// `matches` calls whose regex was in the worker's cache or compiled, all workers.
static REGEX_LOOKUPS: crate::hits::Counts = crate::hits::Counts::new();

/// (hits, misses) of the per-worker regex caches.
pub fn regex_cache_counts() -> (u64, u64) {
    REGEX_LOOKUPS.get()
}

fn regex_matches(text: &str, pattern: &str) -> Result<bool, ExecutionError> {
    REGEXES.with(|cache| {
        if let Some(re) = REGEX_LOOKUPS.count(cache.borrow().get(pattern)) {
            return Ok(re.is_match(text));
        }
        let re =
            regex::Regex::new(pattern).map_err(|e| ExecutionError::function_error("matches", e))?;
        let found = re.is_match(text);
        let mut cache = cache.borrow_mut();
        if cache.len() < REGEX_CACHE_MAX {
            cache.insert(pattern.to_owned(), re);
        }
        Ok(found)
    })
}

fn string_arg<'a>(args: &'a [CowVal<'_, '_>], i: usize) -> Result<&'a str, ExecutionError> {
    args.get(i)
        .and_then(|v| v.downcast_ref::<CelString>())
        .map(|s| s.inner())
        .ok_or_else(|| ExecutionError::function_error("matches", "expects two strings"))
}

/// `matches(text, re)` and `text.matches(re)`.
fn matches<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let found = regex_matches(string_arg(&args, 0)?, string_arg(&args, 1)?)?;
    Ok(CowVal::owned(CelBool::from(found)))
}

/// `list.contains(x)`: what `x in list` does, in the method form existing configs use.
fn list_contains<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [list, item] = &args[..] else {
        return Err(ExecutionError::invalid_argument_count(2, args.len()));
    };
    let container = list
        .as_container()
        .ok_or_else(|| ExecutionError::function_error("contains", "receiver is not a list"))?;
    Ok(CowVal::owned(CelBool::from(container.contains(&**item)?)))
}

/// The environment every rule is compiled for and evaluated in.
pub fn environment() -> Arc<Env> {
    let mut env = Env::stdlib();
    let string = || types::STRING_TYPE;
    env.add_member_overload(
        "contains",
        "list_contains",
        types::LIST_TYPE,
        vec![types::DYN_TYPE],
        list_contains,
    )
    .expect("list.contains is not in the standard library");
    env.add_overload("matches", "matches", vec![string(), string()], matches)
        .expect("matches is not registered without the regex feature");
    env.add_member_overload(
        "matches",
        "string_matches",
        string(),
        vec![string()],
        matches,
    )
    .expect("matches is not registered without the regex feature");
    Arc::new(env)
}

/// The configured names a literal compared with `request.listener`, `request.upstream` or
/// `identity.oidc.provider` must be one of.
pub struct Known<'a> {
    pub listeners: Vec<&'a str>,
    pub upstreams: Vec<&'a str>,
    /// `[auth.oidc.<name>]` names.
    pub providers: Vec<&'a str>,
}

/// Compile one rule; `table` and `index` locate it in error messages; literals compared with
/// `request.listener` and `request.upstream` must be `known`.
pub fn compile(
    env: &Env,
    table: &str,
    index: usize,
    source: &str,
    known: &Known<'_>,
) -> Result<Program, RuleError> {
    let error = |(line, column): (usize, usize), message: String| RuleError {
        table: table.to_owned(),
        index,
        line,
        column,
        message,
    };
    let program = env.compile(source).map_err(|errs| {
        let first = errs.errors.first();
        let pos = first.map_or((1, 1), |e| {
            (e.pos.0.max(1) as usize, (e.pos.1.max(0) as usize) + 1)
        });
        let msg = first.map_or_else(|| errs.to_string(), |e| e.msg.clone());
        error(pos, format!("syntax error: {msg}"))
    })?;
    let mut scope = Vec::new();
    check(program.expression(), &mut scope, known)
        .map_err(|(id, message)| error(position(source, program.source_info(), id), message))?;
    Ok(program)
}

/// 1-based line and column of an expression node.
fn position(source: &str, info: &SourceInfo, id: u64) -> (usize, usize) {
    let offset = info.offset_for(id).map_or(0, |(start, _)| start as usize);
    let mut line = 1;
    let mut column = 1;
    for c in source.chars().take(offset) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

type CheckResult = Result<(), (u64, String)>;

/// Reject names no request can ever have, so such a rule fails at startup, not per request.
fn check(e: &IdedExpr, scope: &mut Vec<String>, known: &Known<'_>) -> CheckResult {
    let check = |x: &IdedExpr, scope: &mut Vec<String>| check(x, scope, known);
    match &e.expr {
        Expr::Ident(name) => {
            if scope.iter().any(|s| s == name) || name == "identity" || name == "request" {
                Ok(())
            } else {
                Err((
                    e.id,
                    format!("unknown variable '{name}' (use identity or request)"),
                ))
            }
        }
        Expr::Select(sel) => match path(e) {
            Some(segments) if !scope.iter().any(|s| s == segments[0]) => {
                check_path(e.id, &segments)
            }
            _ => check(&sel.operand, scope),
        },
        Expr::Call(call) => {
            let name = call.func_name.as_str();
            let operator = name.starts_with('_')
                || name.starts_with("!_")
                || name.starts_with("-_")
                || name.starts_with('@');
            if !operator && !FUNCTIONS.contains(&name) {
                return Err((e.id, format!("unknown function '{name}'")));
            }
            if name == "matches" {
                check_regex(call.args.last())?;
            }
            check_named_literals(name, &call.args, &["request", "listener"], &known.listeners)?;
            check_named_literals(name, &call.args, &["request", "upstream"], &known.upstreams)?;
            let provider = ["identity", "oidc", "provider"];
            check_named_literals(name, &call.args, &provider, &known.providers)?;
            if let Some(target) = &call.target {
                check(target, scope)?;
            }
            call.args.iter().try_for_each(|a| check(a, scope))
        }
        Expr::Comprehension(c) => {
            check(&c.iter_range, scope)?;
            check(&c.accu_init, scope)?;
            let before = scope.len();
            scope.push(c.iter_var.clone());
            scope.extend(c.iter_var2.clone());
            scope.push(c.accu_var.clone());
            let inner = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .try_for_each(|x| check(x, scope));
            scope.truncate(before);
            inner
        }
        Expr::List(list) => list.elements.iter().try_for_each(|x| check(x, scope)),
        Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => check(&m.key, scope).and_then(|_| check(&m.value, scope)),
            EntryExpr::StructField(f) => check(&f.value, scope),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => check(&m.key, scope).and_then(|_| check(&m.value, scope)),
            EntryExpr::StructField(f) => check(&f.value, scope),
        }),
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

/// `a.b.c` (or `has(a.b.c)`) as its segments, when the expression is a plain name path.
fn path(e: &IdedExpr) -> Option<Vec<&str>> {
    let mut segments = Vec::new();
    let mut cur = e;
    loop {
        match &cur.expr {
            Expr::Select(sel) => {
                segments.push(sel.field.as_str());
                cur = &sel.operand;
            }
            Expr::Ident(name) => {
                segments.push(name.as_str());
                segments.reverse();
                return Some(segments);
            }
            _ => return None,
        }
    }
}

/// A field path below `identity` or `request` must name a field those variables have.
fn check_path(id: u64, segments: &[&str]) -> CheckResult {
    let (root, rest) = segments.split_first().expect("a path has a root");
    let fields: &[&str] = match *root {
        "identity" => IDENTITY_FIELDS,
        "request" => REQUEST_FIELDS,
        other => {
            return Err((
                id,
                format!("unknown variable '{other}' (use identity or request)"),
            ));
        }
    };
    let unknown = |field: &str, of: &str, known: &[&str]| {
        Err((
            id,
            format!(
                "unknown field '{field}' of {of} (it has {})",
                known.join(", ")
            ),
        ))
    };
    let Some((first, rest)) = rest.split_first() else {
        return Ok(());
    };
    if !fields.contains(first) {
        return unknown(first, root, fields);
    }
    if *root == "identity" && *first == "oidc" {
        return match rest {
            [] | ["claims", ..] => Ok(()),
            [field] if OIDC_FIELDS.contains(field) => Ok(()),
            [field, ..] if !OIDC_FIELDS.contains(field) => {
                unknown(field, "identity.oidc", OIDC_FIELDS)
            }
            _ => Err((id, "identity.oidc.provider has no fields".to_owned())),
        };
    }
    let nested = *root == "identity" && *first == "certificate";
    match (nested, rest) {
        (_, []) => Ok(()),
        (true, [field]) if CERTIFICATE_FIELDS.contains(field) => Ok(()),
        (true, [field, ..]) if !CERTIFICATE_FIELDS.contains(field) => {
            unknown(field, "identity.certificate", CERTIFICATE_FIELDS)
        }
        _ => Err((
            id,
            format!("{} has no fields", segments[..segments.len() - 1].join(".")),
        )),
    }
}

/// `<field> == 'x'`, `!=` and `in [...]` must name configured listeners (`request.listener`),
/// upstreams (`request.upstream`) or OIDC providers (`identity.oidc.provider`): a typo would
/// otherwise never match, and under `default = "allow"` a deny rule would silently not apply.
fn check_named_literals(
    func: &str,
    args: &[IdedExpr],
    field_path: &[&str],
    listeners: &[&str],
) -> CheckResult {
    let field = *field_path.last().expect("a field path");
    let field = if field == "provider" {
        "OIDC provider"
    } else {
        field
    };
    let is_listener = |x: &IdedExpr| path(x).is_some_and(|p| p == field_path);
    let literals: Vec<&IdedExpr> = match (func, args) {
        ("_==_" | "_!=_", [a, b]) if is_listener(a) => vec![b],
        ("_==_" | "_!=_", [a, b]) if is_listener(b) => vec![a],
        ("@in", [a, b]) if is_listener(a) => match &b.expr {
            Expr::List(list) => list.elements.iter().collect(),
            _ => vec![],
        },
        _ => vec![],
    };
    for lit in literals {
        // `identity.oidc.provider != ''`: any OIDC identity.
        if let Expr::Literal(LiteralValue::String(s)) = &lit.expr
            && !(field == "OIDC provider" && s.inner().is_empty())
            && !listeners.contains(&s.inner())
        {
            return Err((
                lit.id,
                format!(
                    "unknown {field} '{}' (configured: {})",
                    s.inner(),
                    if listeners.is_empty() {
                        "none".to_owned()
                    } else {
                        listeners.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// A literal `matches` pattern must compile (a broken one would deny every request).
fn check_regex(pattern: Option<&IdedExpr>) -> CheckResult {
    if let Some(IdedExpr {
        id,
        expr: Expr::Literal(LiteralValue::String(p)),
    }) = pattern
    {
        regex::Regex::new(p.inner()).map_err(|e| (*id, format!("invalid regex: {e}")))?;
    }
    Ok(())
}
