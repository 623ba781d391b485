//! The check behind [`LAYERS`](crate::LAYERS): every `crate::` path in the
//! platform's sources (comments aside) names a module below its own.
//! Read from the sources because the compiler accepts a cycle between
//! modules of one crate; nothing else would say when one comes back.

use std::{collections::BTreeMap, fs, path::Path};

use crate::LAYERS;

/// The crate's sources: (the top module a file belongs to, its code
/// without comment lines), for every file but lib.rs.
fn sources() -> Vec<(String, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("the sources") {
            let path = entry.expect("a source").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(&root).expect("under src").to_string_lossy().into_owned();
                let top = relative.split('/').next().expect("a name").trim_end_matches(".rs").to_owned();
                let code: String = fs::read_to_string(&path)
                    .expect("a readable source")
                    .lines()
                    .filter(|line| !line.trim_start().starts_with("//"))
                    .flat_map(|line| [line, "\n"])
                    .collect();
                files.push((top, relative, code));
            }
        }
    }
    files
}

/// The first names of the paths after each `crate::`: `crate::db::Page`
/// gives `db`, `crate::{Error, feed::{Backoff}}` gives `Error` and `feed`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let macro_path = rest[..at].ends_with('$');
        rest = &rest[at + "crate::".len()..];
        if macro_path {
            continue;
        }
        if let Some(list) = rest.strip_prefix('{') {
            let (mut depth, mut item, mut end) = (0usize, String::new(), list.len());
            for (i, c) in list.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => names.push(std::mem::take(&mut item)),
                    _ => {}
                }
                if depth == 0 && c != ',' && c != '}' {
                    item.push(c);
                }
            }
            names.push(item);
            rest = &list[end..];
        } else {
            names.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    names
        .iter()
        .map(|n| n.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
        .filter(|n| !n.is_empty() && n != "self")
        .collect()
}

/// What a name at the crate's root stands for: a module, an item lib.rs
/// re-exports from one, or an exported macro and the module it is in.
fn owners(files: &[(String, String, String)]) -> BTreeMap<String, String> {
    let mut owners: BTreeMap<String, String> =
        LAYERS.iter().map(|m| ((*m).to_owned(), (*m).to_owned())).collect();
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).expect("lib.rs");
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub use ")) {
        let (module, items) = line.split_once("::").expect("pub use module::items");
        for item in items.trim_end_matches(';').trim_matches(|c| c == '{' || c == '}').split(',') {
            owners.insert(item.trim().to_owned(), module.to_owned());
        }
    }
    for (top, _, code) in files {
        for name in code.split("macro_rules! ").skip(1) {
            let name: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            owners.insert(name, top.clone());
        }
    }
    owners
}

#[test]
fn every_module_uses_only_the_modules_below_it() {
    let files = sources();
    let owners = owners(&files);
    let rank = |module: &str| LAYERS.iter().position(|m| *m == module);
    let mut upward = Vec::new();
    for (top, file, code) in &files {
        if top == "layers" || top == "lib" {
            continue;
        }
        let mine = rank(top).unwrap_or_else(|| panic!("{file}: the module {top} is missing from LAYERS"));
        for name in crate_paths(code) {
            // Test helpers at the root (`scratch_dir`) belong to no layer.
            let Some(owner) = owners.get(&name) else { continue };
            if rank(owner).expect("an owner is a layer") > mine {
                upward.push(format!("{file} uses {owner} (crate::{name})"));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(upward.is_empty(), "uses of a higher layer, against LAYERS:\n{}", upward.join("\n"));
    let modules: Vec<&str> =
        files.iter().map(|(top, ..)| top.as_str()).filter(|t| !["layers", "lib"].contains(t)).collect();
    for layer in LAYERS {
        assert!(modules.contains(layer), "LAYERS names {layer}, which is no module");
    }
}

#[test]
fn the_paths_of_a_use_list_are_read_whole() {
    let code = "use crate::{\n    Database, Error,\n    db::{Backend, failure},\n    feed::{Backoff, QUIET},\n    task::Task,\n};\nlet x = crate::wire::now(); $crate::db::x";
    assert_eq!(crate_paths(code), ["Database", "Error", "db", "feed", "task", "wire"]);
}
