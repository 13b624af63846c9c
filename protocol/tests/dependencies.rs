//! `protocol` is the sans-IO core every role and the offline auditor share: it must never
//! reach for a runtime, a network or a database, directly or through a dependency. This test
//! walks the lock file from `quorate-protocol` through everything it depends on, on every
//! target (so it errs on the side of refusing).

use std::collections::{BTreeMap, BTreeSet};

/// Crates that would bring an async runtime, sockets or a store into the core.
const FORBIDDEN: [&str; 5] = ["tokio", "libp2p", "redb", "mio", "async-std"];

fn lock() -> BTreeMap<String, Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    let text = std::fs::read_to_string(path).expect("the workspace's Cargo.lock");
    let lock: toml::Table = text.parse().expect("Cargo.lock is TOML");
    let mut graph = BTreeMap::new();
    for package in lock["package"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("a name").to_owned();
        // A dependency reads "name", or "name version" when several versions are locked.
        let dependencies: Vec<String> = package
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|d| d.as_str())
                    .map(|d| d.split(' ').next().unwrap_or(d).to_owned())
                    .collect()
            })
            .unwrap_or_default();
        graph
            .entry(name)
            .or_insert_with(Vec::new)
            .extend(dependencies);
    }
    graph
}

#[test]
fn protocol_never_depends_on_tokio_libp2p_or_a_store() {
    let graph = lock();
    let mut seen = BTreeSet::new();
    let mut todo = vec![(
        "quorate-protocol".to_owned(),
        vec!["quorate-protocol".to_owned()],
    )];
    while let Some((name, path)) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        assert!(
            !FORBIDDEN
                .iter()
                .any(|f| name == *f || name.starts_with(&format!("{f}-"))),
            "protocol reaches {name} through {}",
            path.join(" -> ")
        );
        for dependency in graph.get(&name).into_iter().flatten() {
            let mut next = path.clone();
            next.push(dependency.clone());
            todo.push((dependency.clone(), next));
        }
    }
    // The walk did happen: the core's own cryptography is in the graph.
    assert!(seen.contains("tfhe") && seen.contains("ed25519-dalek"));
}

/// The crates below protocol must not depend on the crates above it.
#[test]
fn the_crate_graph_points_one_way() {
    let graph = lock();
    let depends = |from: &str, to: &str| graph[from].iter().any(|d| d == to);
    for lower in ["quorate-protocol", "quorate-training"] {
        for upper in [
            "quorate-runtime",
            "quorate-keyceremony",
            "quorate-node",
            "quorate-coordinator",
        ] {
            assert!(!depends(lower, upper), "{lower} depends on {upper}");
        }
    }
    for daemon in ["quorate-node", "quorate-coordinator"] {
        assert!(
            !depends(daemon, "quorate-keyceremony"),
            "{daemon} depends on keyceremony"
        );
    }
    assert!(!depends("quorate-runtime", "quorate-keyceremony"));
}

/// bincode 1, unmaintained, comes in with tfhe's serialisation (SECURITY.md, "Dependencies").
/// It is acceptable only while Quorate uses tfhe for its `core_crypto` primitives alone and
/// decodes every byte another party writes with its own decoders: any other path into tfhe
/// fails here, so that the acceptance is revisited.
#[test]
fn tfhe_is_used_only_through_its_core_crypto_primitives() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut sources = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source directory") {
            let path = entry.expect("an entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() && name != "target" && !name.starts_with('.') {
                todo.push(path);
            } else if name.ends_with(".rs") {
                sources.push(path);
            }
        }
    }
    // Split, so that this file's own text holds neither.
    let (path_start, allowed) = (concat!("tfhe", "::"), concat!("tfhe", "::core_crypto::"));
    let mut uses = 0;
    for path in &sources {
        let text = std::fs::read_to_string(path).expect("a source file");
        for (at, _) in text.match_indices(path_start) {
            // A path into tfhe itself, not the tail of another crate's name.
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            uses += 1;
            assert!(
                text[at..].starts_with(allowed),
                "{} uses tfhe outside core_crypto: {}",
                path.display(),
                text[at..].lines().next().unwrap_or("")
            );
        }
    }
    // The walk did happen: the scheme is built on tfhe's primitives.
    assert!(
        uses > 0 && sources.len() > 50,
        "{uses} uses in {} files",
        sources.len()
    );
}
