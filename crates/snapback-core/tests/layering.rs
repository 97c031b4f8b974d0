//! Guards the layering of snapback-core: no module cycle, and object keys
//! spelled only in `layout.rs`.
//!
//! A module depends on another when its non-test code names it
//! (`use crate::x::…`, `crate::x::…`, `use crate::{x, …}`, or an item that
//! lib.rs re-exports from `x`), or calls `self.f(…)` where `f` is a
//! `Repository` method that only `x` defines (the operations extend
//! `Repository` from their own modules, so a call is a dependency too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src_dir(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

/// Every non-test `.rs` file under `dir`, with its module path relative
/// to it (`repo`, `vfs/fetch`, …).
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read src dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                // Test modules in files of their own (`tests.rs`,
                // `x_tests.rs`) are test code.
                && !p.file_stem().is_some_and(|s| s.to_string_lossy().ends_with("tests"))
            {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under src")
                    .with_extension("")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&p).expect("read source");
                out.push((rel, text));
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without comments and without its test module (by
/// convention the `#[cfg(test)] mod tests` at the end of a file).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal ("s3://…") is not a comment.
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first names after `crate::`: `crate::a::b` gives `a`, `crate::{a,
/// b::c, D}` gives `a`, `b` and `D`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `snapback_core::` and the like end in "crate::" too.
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        start = false;
                        out.insert(ident_at(&group[j..]).to_string());
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident_at(rest).to_string());
        }
    }
    out
}

/// What lib.rs re-exports: item name -> the module it comes from.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let code = code_of(lib);
    for stmt in code.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        let items = items.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let item = item.trim();
            let name = match item.split_once(" as ") {
                Some((_, alias)) => alias.trim(),
                None => item,
            };
            if !name.is_empty() {
                out.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

/// Names of the methods each module defines in its `impl Repository`.
fn repository_methods(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in code.lines() {
        if line.starts_with("impl Repository {") {
            inside = true;
        } else if inside && line.starts_with('}') {
            inside = false;
        } else if inside {
            let l = line.trim_start();
            if line.len() - l.len() != 4 {
                continue;
            }
            let l = l
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            if let Some(f) = l.strip_prefix("fn ") {
                out.insert(ident_at(f).to_string());
            }
        }
    }
    out
}

/// The module graph of snapback-core: module -> the modules it uses.
fn core_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = sources(&src_dir("snapback-core"));
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let lib = &files.iter().find(|(m, _)| m == "lib").expect("lib.rs").1;
    let reexported = reexports(lib);
    let code: BTreeMap<String, String> =
        files.iter().map(|(m, t)| (m.clone(), code_of(t))).collect();
    let methods: BTreeMap<String, BTreeSet<String>> = code
        .iter()
        .map(|(m, c)| (m.clone(), repository_methods(c)))
        .collect();
    let mut graph = BTreeMap::new();
    for (m, c) in &code {
        let mut deps = BTreeSet::new();
        for r in crate_refs(c) {
            let target = if modules.contains(&r) {
                Some(r)
            } else {
                reexported.get(&r).cloned()
            };
            if let Some(t) = target.filter(|t| t != m && t != "lib") {
                deps.insert(t);
            }
        }
        let own = &methods[m];
        for (i, _) in c.match_indices("self.") {
            let name = ident_at(&c[i + "self.".len()..]);
            if own.contains(name) || !c[i + "self.".len() + name.len()..].starts_with('(') {
                continue;
            }
            let definers: Vec<&String> = methods
                .iter()
                .filter(|(_, ms)| ms.contains(name))
                .map(|(d, _)| d)
                .collect();
            if let [d] = definers[..] {
                deps.insert(d.clone());
            }
        }
        graph.insert(m.clone(), deps);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("low");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("low");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn core_modules_have_no_import_cycle() {
    let graph = core_graph();
    // The guard sees what it must: these edges exist in the code.
    for (from, to) in [("snapshot", "repo"), ("read", "selector"), ("keys", "lock")] {
        assert!(
            graph[from].contains(to),
            "the guard no longer sees {from} -> {to}: {graph:#?}"
        );
    }
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "module cycles in snapback-core (each group uses itself through the others; move the shared part down, into a module that none of them is above): {}\n{graph:#?}",
        found
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn the_cycle_guard_finds_a_planted_cycle() {
    let mut graph = core_graph();
    graph
        .get_mut("layout")
        .expect("layout")
        .insert("repo".into());
    let found = cycles(&graph);
    assert!(
        found
            .iter()
            .any(|c| c.contains(&"layout".to_string()) && c.contains(&"repo".to_string())),
        "{found:?}"
    );
}

#[test]
fn object_keys_are_spelled_only_in_the_layout_module() {
    let prefixes = [
        "data/",
        "index/",
        "snapshots/",
        "timeline/",
        "dicts/",
        "config.next",
        "keys/",
        "locks/",
        "checks/",
        "releases/",
        "audit/",
    ];
    let mut found = Vec::new();
    // The mount is left out: its virtual tree has a `snapshots/` directory
    // of its own, which is not an object key.
    for krate in [
        "snapback-core",
        "snapback-cli",
        "snapback-repair",
        "snapback-vfs",
    ] {
        for (m, text) in sources(&src_dir(krate)) {
            if krate == "snapback-core" && m == "layout" {
                continue;
            }
            for (n, line) in code_of(&text).lines().enumerate() {
                for p in prefixes {
                    if line.contains(&format!("\"{p}")) {
                        found.push(format!("{krate}/src/{m}.rs:{}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "object keys spelled outside snapback-core's layout.rs (use its constants and functions):\n{}",
        found.join("\n")
    );
}
