//! The relay's module layering, checked: the foundation modules (store, records,
//! decisions, audit log, configuration, TLS, backups, blobs, MLS group state) never
//! import the relay's I/O shell (relay, federation, net, delivery, revocation,
//! recovery, retention, metrics, control, reload, cli), so dependencies between the
//! two point one way. Within the shell the modules still call each other through
//! [`crate::relay::Relay`].

use std::collections::BTreeSet;

/// The foundation: modules that may import each other, never the shell.
const FOUNDATION: &[&str] = &[
    "audit",
    "backup",
    "blobs",
    "config",
    "decide",
    "entry_cache",
    "error",
    "groups",
    "key_fetch",
    "keyspace",
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
