//! Module import cycles of a crate, from its source alone: every `.rs` file under `src/` is
//! a module (`lib.rs` the root, or `main.rs` without one; `x/mod.rs` the module `x`; `bin/`
//! left out), and a module depends on
//! another when it names it in a path: `use crate::a::b`, `use super::c`, `use child::d` (a
//! child module declared beside it), or `crate::a::f()` / `super::c::T` inline. Each path
//! points at the longest module it names. `mod x;` declarations are containment, not
//! dependencies; comments and everything from the first `#[cfg(test)]` of a file on (the
//! unit tests, which may reach anywhere) are left out. A cycle is a strongly connected group
//! of two or more modules; [`cycles`] returns each, so a test can fail naming them.
//!
//! Text-based on purpose: no parser crate is needed for `use` paths, and macros that build
//! paths (none in Heddle) would be missed rather than misread.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`["sriov", "pf"]`) -> source text (comments and unit tests removed).
fn modules(src: &Path) -> std::io::Result<BTreeMap<Vec<String>, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            let file = parts.pop().expect("a file name");
            if parts.is_empty() && file == "main.rs" && src.join("lib.rs").exists() {
                continue; // a binary over the library: a crate of its own
            }
            match file.as_str() {
                "lib.rs" | "main.rs" | "mod.rs" => {}
                f => parts.push(f.trim_end_matches(".rs").to_owned()),
            }
            if parts.first().is_some_and(|p| p == "bin") {
                continue; // separate crates
            }
            let text = std::fs::read_to_string(&p)?;
            let code: String = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .map(|l| match l.find("//") {
                    Some(i) => &l[..i],
                    None => l,
                })
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(parts, code);
        }
    }
    Ok(out)
}

/// The `use` items of `code` (each from a line starting with `use` or `pub ... use` up to
/// its `;`), and the rest of the code.
fn split_uses(code: &str) -> (Vec<String>, String) {
    let (mut uses, mut rest) = (Vec::new(), String::new());
    let mut current: Option<String> = None;
    for line in code.lines() {
        let t = line.trim_start();
        let t = match t.strip_prefix("pub") {
            Some(r) if r.starts_with(' ') || r.starts_with('(') => {
                r.split_once(' ').map_or("", |(_, r)| r).trim_start()
            }
            _ => t,
        };
        let start = current.is_none() && t.starts_with("use ");
        if start {
            current = Some(String::new());
        }
        match current.as_mut() {
            Some(cur) => {
                cur.push_str(if start { &t[4..] } else { line });
                cur.push(' ');
                if line.contains(';') {
                    let item = current.take().unwrap_or_default();
                    uses.push(item[..item.find(';').unwrap_or(item.len())].to_owned());
                }
            }
            None => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
    }
    (uses, rest)
}

/// The paths of a `use` tree, braces expanded (`a::{b, c::d}` -> `a::b`, `a::c::d`).
fn use_paths(tree: &str) -> Vec<String> {
    fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
        let tree = tree.trim();
        if let Some(open) = tree.find('{') {
            let head = tree[..open].trim().trim_end_matches("::");
            let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let prefix = join(prefix, head);
            let (mut depth, mut start) = (0, 0);
            for (i, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&prefix, &body[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&prefix, &body[start..], out);
        } else if !tree.is_empty() {
            let path = tree.split(" as ").next().unwrap_or(tree).trim();
            out.push(join(prefix, path));
        }
    }
    fn join(a: &str, b: &str) -> String {
        match (a.is_empty(), b.is_empty()) {
            (true, _) => b.to_owned(),
            (_, true) => a.to_owned(),
            _ => format!("{a}::{b}"),
        }
    }
    let mut out = Vec::new();
    expand("", tree, &mut out);
    out
}

/// Inline `crate::a::b` and `super::c` paths in `code`.
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for root in ["crate::", "super::"] {
        for (i, _) in code.match_indices(root) {
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // part of a longer path, counted from its start
            }
            let tail = &code[i..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let path = tail[..len].trim_end_matches(':');
            if path.contains("::") {
                out.push(path.to_owned());
            }
        }
    }
    out
}

/// The module a path in module `from` names: the longest known module prefix of the path,
/// resolved against `crate`, `super`, `self` or a child module of `from`.
fn target(from: &[String], path: &str, known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").map(str::trim).collect();
    let mut abs: Vec<String> = match *segs.first()? {
        "crate" => vec![],
        "self" => from.to_vec(),
        "super" => from.get(..from.len().checked_sub(1)?)?.to_vec(),
        child => {
            let mut c = from.to_vec();
            c.push(child.to_owned());
            if !known.contains(&c) {
                return None; // an outside crate or std
            }
            from.to_vec()
        }
    };
    let mut i = 1;
    if !matches!(segs[0], "crate" | "self" | "super") {
        i = 0;
    }
    while segs.get(i) == Some(&"super") {
        abs.pop();
        i += 1;
    }
    let mut best = abs.clone();
    for s in &segs[i..] {
        abs.push((*s).to_owned());
        if known.contains(&abs) {
            best = abs.clone();
        } else {
            break;
        }
    }
    Some(best)
}

/// Module dependencies of the crate whose source is `src`: module -> modules it names.
pub fn dependencies(src: &Path) -> std::io::Result<BTreeMap<String, BTreeSet<String>>> {
    let mods = modules(src)?;
    let known: BTreeSet<Vec<String>> = mods.keys().cloned().collect();
    let name = |m: &[String]| {
        if m.is_empty() {
            "crate".to_owned()
        } else {
            m.join("::")
        }
    };
    let mut out = BTreeMap::new();
    for (m, code) in &mods {
        let mut deps = BTreeSet::new();
        let (uses, rest) = split_uses(code);
        let paths = uses.iter().flat_map(|u| use_paths(u));
        for p in paths.chain(inline_paths(&rest)) {
            if let Some(t) = target(m, &p, &known) {
                if &t != m {
                    deps.insert(name(&t));
                }
            }
        }
        out.insert(name(m), deps);
    }
    Ok(out)
}

/// Every import cycle of the crate whose source is `src`: groups of modules that reach each
/// other (Tarjan's strongly connected components of size two or more), each sorted.
pub fn cycles(src: &Path) -> std::io::Result<Vec<Vec<String>>> {
    let deps = dependencies(src)?;
    let nodes: Vec<&String> = deps.keys().collect();
    let index_of: BTreeMap<&String, usize> =
        nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let edges: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            deps[*n]
                .iter()
                .filter_map(|d| index_of.get(d).copied())
                .collect()
        })
        .collect();
    struct Tarjan<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.edges[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    _ => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut group = vec![];
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    group.push(w);
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    self.out.push(group);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges: &edges,
        index: vec![None; nodes.len()],
        low: vec![0; nodes.len()],
        on_stack: vec![false; nodes.len()],
        stack: vec![],
        next: 0,
        out: vec![],
    };
    for v in 0..nodes.len() {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    Ok(t.out
        .into_iter()
        .map(|g| {
            let mut names: Vec<String> = g.into_iter().map(|i| nodes[i].clone()).collect();
            names.sort();
            names
        })
        .collect())
}
