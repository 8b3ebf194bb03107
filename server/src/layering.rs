//! The relay's module layering, checked: dependencies point one way, shell → core
//! → store. The foundation modules (store, records, decisions, audit log,
//! configuration, TLS, backups, blobs, MLS group state, metrics) and the core never
//! import the I/O shell (relay, frames, federation, delivery, revocation, recovery,
//! retention, requests, net, control, reload, cli); no two modules import each other
//! in a circle; and the core reads no clock and touches no socket or task.

use std::collections::BTreeSet;

/// The foundation: modules that may import each other, never the shell.
const FOUNDATION: &[&str] = &[
    "audit",
    "backup",
    "blobs",
    "config",
    "core",
    "decide",
    "entry_cache",
    "error",
    "groups",
    "key_fetch",
    "keyspace",
    "metrics",
    "records",
    "store",
    "tls",
];

/// Items of the crate root every module may use.
const ROOT: &[&str] = &["now"];

/// The `crate::MODULE` paths the non-test code of `module` names.
fn imports(module: &str) -> BTreeSet<String> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join(format!("{module}.rs"))];
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs")
                && path.file_name().is_some_and(|n| n != "tests.rs")
            {
                files.push(path);
            }
        }
    }
    let mut out = BTreeSet::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or_default();
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    out.insert(name);
                }
            }
        }
    }
    out
}

#[test]
fn the_foundation_never_imports_the_shell() {
    for module in FOUNDATION {
        let imports = imports(module);
        let shell: Vec<_> = imports
            .iter()
            .filter(|m| !FOUNDATION.contains(&m.as_str()) && !ROOT.contains(&m.as_str()))
            .collect();
        assert!(
            shell.is_empty(),
            "{module} imports {shell:?}, which are not foundation modules"
        );
    }
    // The check sees imports: the shell's own modules are found importing.
    assert!(imports("relay").contains("store"));
    assert!(imports("federation").contains("relay"));
}

/// Every module of the crate (a file or directory under `src/`).
fn modules() -> Vec<String> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: Vec<String> = std::fs::read_dir(&src)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .filter(|m| !["lib", "main", "layering"].contains(&m.as_str()))
        .collect();
    out.sort();
    out
}

#[test]
fn no_two_modules_import_each_other_in_a_circle() {
    let modules = modules();
    assert!(modules.len() > 20, "modules found: {modules:?}");
    let graph: std::collections::BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| {
            let deps = imports(m)
                .into_iter()
                .filter(|d| modules.contains(d))
                .collect();
            (m.clone(), deps)
        })
        .collect();
    // Depth-first search for a back edge; the path to it is the circle.
    fn visit(
        m: &str,
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(circle) = visit(d, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        let circle = visit(m, &graph, &mut Vec::new(), &mut done);
        assert!(circle.is_none(), "modules import each other: {circle:?}");
    }
    // The check sees a circle when there is one.
    let mut circular = graph.clone();
    circular
        .entry("core".into())
        .or_default()
        .insert("relay".into());
    let mut done = BTreeSet::new();
    assert!(
        circular
            .keys()
            .any(|m| visit(m, &circular, &mut Vec::new(), &mut done).is_some())
    );
}

#[test]
fn the_core_reads_no_clock_and_touches_no_socket_or_task() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("core.rs")];
    files.extend(
        std::fs::read_dir(src.join("core"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs")),
    );
    assert!(files.len() > 5, "core files: {files:?}");
    let forbidden = [
        "quinn::",
        "tokio::spawn",
        "tokio::time",
        "tokio::net",
        "tokio::fs",
        "Instant::now",
        "SystemTime::now",
        "crate::now",
        " now()",
        ".await",
    ];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or_default();
            for word in forbidden {
                // Whole words only (`.awaiting` is not `.await`).
                let found = line.match_indices(word).any(|(i, _)| {
                    !line[i + word.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
                assert!(!found, "{}:{}: the core uses {word}", file.display(), n + 1);
            }
        }
    }
}
