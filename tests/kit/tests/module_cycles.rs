//! No crate of the workspace has a module cycle: within a crate, no
//! top-level module reaches itself again through the paths it names of the
//! others (`crate::b::…`, or a `super::…` that leads to `b`). Two
//! modules that import each other are one unit in all but name: neither can
//! be read, tested or moved into a crate of its own without the other, and
//! the compiler, which keeps the boundaries between crates, allows it
//! between modules. This test keeps them out.
//!
//! Read: every file of the module tree from each crate root (`src/lib.rs`,
//! `src/main.rs`, `src/bin/…`), following `mod` declarations; a file
//! `src/x.rs` or `src/x/…` belongs to the top-level module `x`. Items under
//! `#[cfg(test)]` (or `#[test]`) and the files of test-only modules are
//! skipped: tests may reach across modules. Paths are taken from `use`
//! trees, expressions, types, patterns and macro arguments alike.
//!
//! `cargo test -p lienthong-testkit --test module_cycles -- --nocapture`
//! lists, per crate, how many modules and edges were read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use syn::buffer::{Cursor, TokenBuffer};
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{Attribute, Item, Meta, Token, UseTree};

/// Crates read and reported but not held to the rule: none today. A crate
/// may stand here only while a change of its own is removing its cycles.
const CRATES_NOT_YET_CHECKED: &[&str] = &[];

/// Module → the modules it names, within one crate.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_crate_has_a_module_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest = fs::read_to_string(root.join("Cargo.toml")).expect("the workspace's Cargo.toml");
    let members = workspace_members(&manifest);
    assert!(
        !members.is_empty(),
        "no workspace members found in Cargo.toml"
    );

    let mut cycles_found = Vec::new();
    let mut not_checked_seen = Vec::new();
    for member in &members {
        let dir = root.join(member);
        let package = fs::read_to_string(dir.join("Cargo.toml"))
            .map_err(|e| e.to_string())
            .and_then(|m| package_name(&m))
            .unwrap_or_else(|e| panic!("{member}/Cargo.toml: {e}"));
        let checked = !CRATES_NOT_YET_CHECKED.contains(&package.as_str());
        if !checked {
            not_checked_seen.push(package.clone());
        }
        let roots = crate_roots(&package, &dir.join("src"));
        assert!(!roots.is_empty(), "{member}: no crate root in src/");
        for (label, root_file) in roots {
            let modules = read_crate(&root_file).unwrap_or_else(|e| panic!("{label}: {e}"));
            let edges: usize = modules.graph.values().map(BTreeSet::len).sum();
            let cycles = cycles(&modules.graph);
            println!(
                "{label}: {} modules, {edges} edges ({} files){}",
                modules.graph.len(),
                modules.files,
                if checked {
                    String::new()
                } else {
                    format!(", not yet checked: {} cycles", cycles.len())
                }
            );
            if checked {
                cycles_found.extend(cycles.iter().map(|c| format!("{label}: {}", c.join(" → "))));
            }
        }
    }
    for name in CRATES_NOT_YET_CHECKED {
        assert!(
            not_checked_seen.iter().any(|n| n == name),
            "CRATES_NOT_YET_CHECKED names {name}, which is not a workspace member"
        );
    }
    assert!(
        cycles_found.is_empty(),
        "module cycles (move what both sides need to where it belongs):\n{}",
        cycles_found.join("\n")
    );
}

#[test]
fn the_cycle_finder_sees_a_cycle_and_only_a_cycle() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry((*a).to_owned())
                .or_default()
                .insert((*b).to_owned());
            g.entry((*b).to_owned()).or_default();
        }
        g
    };
    // A diamond and a chain: no cycle.
    let acyclic = graph(&[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")]);
    assert!(cycles(&acyclic).is_empty(), "{:?}", cycles(&acyclic));

    // The same with e → b closing b → d → e → b, and a pair x ↔ y beside it.
    let cyclic = graph(&[
        ("a", "b"),
        ("a", "c"),
        ("b", "d"),
        ("c", "d"),
        ("d", "e"),
        ("e", "b"),
        ("x", "y"),
        ("y", "x"),
    ]);
    let found: Vec<String> = cycles(&cyclic).iter().map(|c| c.join(" → ")).collect();
    assert_eq!(found, ["b → d → e → b", "x → y → x"]);
}

#[test]
fn the_reader_takes_crate_and_super_paths_and_skips_tests() {
    let src = r#"
        use crate::{b::B, c};
        use super::d::*;
        use self::own::Thing;
        use std::fmt;
        fn f(x: super::e::E) -> crate::f::F {
            let _ = format!("{}", crate::g::name());
            crate::h::H { x }
        }
        mod inner {
            use super::super::k::K;
            mod deeper;
        }
        #[cfg(test)]
        mod tests {
            use crate::t1::T;
        }
        #[cfg(all(unix, test))]
        use crate::t2::T;
        #[test]
        fn t() { crate::t3::run(); }
        #[cfg(any(test, feature = "dev"))]
        use crate::dev::D;
        #[cfg(test)]
        mod test_file;
    "#;
    let file = syn::parse_file(src).expect("the sample parses");
    let mut r = Reader::new(
        vec!["a".to_owned()],
        PathBuf::from("src/a"),
        PathBuf::from("src"),
    );
    for item in &file.items {
        r.visit_item(item);
    }
    let named: BTreeSet<&str> = r
        .refs
        .iter()
        .map(|(from, to)| {
            assert_eq!(from, "a");
            to.as_str()
        })
        .collect();
    let expected: BTreeSet<&str> = ["a", "b", "c", "d", "dev", "e", "f", "g", "h", "k"].into();
    assert_eq!(named, expected);
    let children: Vec<String> = r.children.iter().map(|c| c.path.join("::")).collect();
    assert_eq!(children, ["a::inner::deeper"]);
    assert_eq!(
        r.children[0].candidates,
        [
            PathBuf::from("src/a/inner/deeper.rs"),
            PathBuf::from("src/a/inner/deeper/mod.rs")
        ]
    );
}

// ---------------------------------------------------------------------------
// The workspace
// ---------------------------------------------------------------------------

/// The `members` of the root manifest's `[workspace]` table.
fn workspace_members(manifest: &str) -> Vec<String> {
    let text = format!("\n{manifest}");
    let Some(table) = text.split("\n[").find(|t| t.starts_with("workspace]")) else {
        return Vec::new();
    };
    let Some(at) = table.find("members") else {
        return Vec::new();
    };
    let rest = &table[at..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    rest[open + 1..close]
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `name` of the `[package]` table.
fn package_name(manifest: &str) -> Result<String, String> {
    let text = format!("\n{manifest}");
    let table = text
        .split("\n[")
        .find(|t| t.starts_with("package]"))
        .ok_or("no [package] table")?;
    table
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name"))
        .filter_map(|l| l.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| "no package name".to_owned())
}

/// The package's crates: the library, the binary, `src/bin/…`, each with
/// the label it is reported under.
fn crate_roots(package: &str, src: &Path) -> Vec<(String, PathBuf)> {
    let mut roots = Vec::new();
    for (kind, file) in [("lib", src.join("lib.rs")), ("main", src.join("main.rs"))] {
        if file.is_file() {
            roots.push((kind.to_owned(), file));
        }
    }
    if let Ok(entries) = fs::read_dir(src.join("bin")) {
        let mut bins: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        bins.sort();
        for path in bins {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            let file = if path.is_dir() {
                path.join("main.rs")
            } else {
                path.clone()
            };
            if let Some(name) = name
                && file.is_file()
                && (path.is_dir() || path.extension().is_some_and(|e| e == "rs"))
            {
                roots.push((format!("bin {name}"), file));
            }
        }
    }
    let single = roots.len() == 1;
    roots
        .into_iter()
        .map(|(kind, file)| {
            let label = if single {
                package.to_owned()
            } else {
                format!("{package} ({kind})")
            };
            (label, file)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// One crate's modules
// ---------------------------------------------------------------------------

struct CrateModules {
    /// Every top-level module, with the others it names.
    graph: Graph,
    /// Files read (test-only files are not).
    files: usize,
}

/// Reads the module tree from `root_file` and the edges between its
/// top-level modules.
fn read_crate(root_file: &Path) -> Result<CrateModules, String> {
    let src = root_file.parent().unwrap_or(Path::new("."));
    let mut refs = BTreeSet::new();
    let mut tops = BTreeSet::new();
    let mut files = 0;
    let mut queue = vec![(root_file.to_path_buf(), src.to_path_buf(), Vec::new())];
    while let Some((file, dir, path)) = queue.pop() {
        let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let ast = syn::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        if is_test(&ast.attrs) {
            continue;
        }
        files += 1;
        let mut reader = Reader::new(path, dir, file.parent().unwrap_or(src).to_path_buf());
        for item in &ast.items {
            reader.visit_item(item);
        }
        refs.append(&mut reader.refs);
        tops.append(&mut reader.tops);
        for child in reader.children {
            let found = child
                .candidates
                .iter()
                .find(|c| c.is_file())
                .ok_or_else(|| {
                    format!(
                        "{}: no file for module {} (looked for {:?})",
                        file.display(),
                        child.path.join("::"),
                        child.candidates
                    )
                })?
                .clone();
            let dir = match found.file_name().and_then(|n| n.to_str()) {
                Some("mod.rs") => found.parent().unwrap_or(src).to_path_buf(),
                _ => found.with_extension(""),
            };
            queue.push((found, dir, child.path));
        }
    }
    let mut graph: Graph = tops.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for (from, to) in refs {
        if from != to && tops.contains(&to) {
            graph.entry(from).or_default().insert(to);
        }
    }
    Ok(CrateModules { graph, files })
}

/// An out-of-line module declared in a file read.
struct Child {
    /// Its path from the crate root.
    path: Vec<String>,
    /// Where its file may be, in the order the compiler looks.
    candidates: Vec<PathBuf>,
}

/// Reads one file's items at a place in the module tree.
struct Reader {
    /// The module being read, from the crate root (empty: the root).
    path: Vec<String>,
    /// Where the out-of-line children of `path` live.
    dir: PathBuf,
    /// The directory of the file, for `#[path]`.
    file_dir: PathBuf,
    /// (top-level module, top-level module named).
    refs: BTreeSet<(String, String)>,
    /// Top-level modules declared (when reading the root).
    tops: BTreeSet<String>,
    children: Vec<Child>,
}

impl Reader {
    fn new(path: Vec<String>, dir: PathBuf, file_dir: PathBuf) -> Reader {
        Reader {
            path,
            dir,
            file_dir,
            refs: BTreeSet::new(),
            tops: BTreeSet::new(),
            children: Vec::new(),
        }
    }

    /// A path named in the module being read: `crate::b…`, `super::…` and
    /// `self::…` are resolved from the root; any other path starts outside
    /// the crate or at a name in scope, and is no edge.
    fn reference<S: AsRef<str>>(&mut self, segments: &[S]) {
        let Some(first) = segments.first() else {
            return;
        };
        let (base, rest) = match first.as_ref() {
            "crate" => (&[][..], &segments[1..]),
            "self" => (&self.path[..], &segments[1..]),
            "super" => {
                let ups = segments
                    .iter()
                    .take_while(|s| s.as_ref() == "super")
                    .count();
                let Some(keep) = self.path.len().checked_sub(ups) else {
                    return;
                };
                (&self.path[..keep], &segments[ups..])
            }
            _ => return,
        };
        let to = match base.first() {
            Some(top) => top.clone(),
            None => match rest.first() {
                Some(top) => top.as_ref().to_owned(),
                None => return,
            },
        };
        if let Some(from) = self.path.first() {
            self.refs.insert((from.clone(), to));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &UseTree) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.reference(prefix);
                prefix.pop();
            }
            UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.reference(prefix);
                prefix.pop();
            }
            UseTree::Glob(_) => self.reference(prefix),
            UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// Macro arguments are tokens, not syntax: the paths in them are found
    /// by their shape (`crate`, `super` or `self`, then `::`-separated names).
    fn scan_tokens(&mut self, mut at: Cursor<'_>) {
        while !at.eof() {
            if let Some((ident, rest)) = at.ident() {
                let first = ident.to_string();
                at = rest;
                if matches!(first.as_str(), "crate" | "super" | "self") {
                    let mut segments = vec![first];
                    while let Some((next, after)) = path_separator(at).and_then(|c| c.ident()) {
                        segments.push(next.to_string());
                        at = after;
                    }
                    self.reference(&segments);
                }
            } else if let Some((inside, _, _, rest)) = at.any_group() {
                self.scan_tokens(inside);
                at = rest;
            } else if let Some((_, rest)) = at.token_tree() {
                at = rest;
            } else {
                break;
            }
        }
    }
}

fn path_separator(at: Cursor<'_>) -> Option<Cursor<'_>> {
    let (first, at) = at.punct()?;
    let (second, at) = at.punct()?;
    (first.as_char() == ':' && second.as_char() == ':').then_some(at)
}

impl<'ast> Visit<'ast> for Reader {
    fn visit_item(&mut self, item: &'ast Item) {
        let attrs = match item {
            Item::Const(i) => &i.attrs,
            Item::Enum(i) => &i.attrs,
            Item::ExternCrate(i) => &i.attrs,
            Item::Fn(i) => &i.attrs,
            Item::ForeignMod(i) => &i.attrs,
            Item::Impl(i) => &i.attrs,
            Item::Macro(i) => &i.attrs,
            Item::Mod(i) => &i.attrs,
            Item::Static(i) => &i.attrs,
            Item::Struct(i) => &i.attrs,
            Item::Trait(i) => &i.attrs,
            Item::TraitAlias(i) => &i.attrs,
            Item::Type(i) => &i.attrs,
            Item::Union(i) => &i.attrs,
            Item::Use(i) => &i.attrs,
            _ => return visit::visit_item(self, item),
        };
        if is_test(attrs) {
            return;
        }
        let Item::Mod(m) = item else {
            return visit::visit_item(self, item);
        };
        let name = m.ident.to_string();
        if self.path.is_empty() {
            self.tops.insert(name.clone());
        }
        let mut path = self.path.clone();
        path.push(name.clone());
        match &m.content {
            Some((_, items)) => {
                let outer = std::mem::replace(&mut self.path, path);
                self.dir.push(&name);
                for item in items {
                    self.visit_item(item);
                }
                self.dir.pop();
                self.path = outer;
            }
            None => {
                let candidates = match path_attribute(attrs) {
                    Some(p) => vec![self.file_dir.join(p)],
                    None => vec![
                        self.dir.join(format!("{name}.rs")),
                        self.dir.join(&name).join("mod.rs"),
                    ],
                };
                self.children.push(Child { path, candidates });
            }
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => return visit::visit_impl_item(self, item),
        };
        if !is_test(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.reference(&segments);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        visit::visit_macro(self, mac);
        let tokens = TokenBuffer::new2(mac.tokens.clone());
        self.scan_tokens(tokens.begin());
    }
}

/// Whether the item exists only when testing: `#[test]` (or a test
/// attribute such as `#[tokio::test]`), or a `#[cfg]` that requires `test`.
fn is_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        let path = a.path();
        if path.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        path.is_ident("cfg") && a.parse_args::<Meta>().is_ok_and(|m| requires_test(&m))
    })
}

fn requires_test(meta: &Meta) -> bool {
    match meta {
        Meta::Path(p) => p.is_ident("test"),
        Meta::List(l) => {
            let inner: Vec<Meta> = l
                .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                .map(|p| p.into_iter().collect())
                .unwrap_or_default();
            if l.path.is_ident("all") {
                inner.iter().any(requires_test)
            } else if l.path.is_ident("any") {
                !inner.is_empty() && inner.iter().all(requires_test)
            } else {
                false
            }
        }
        Meta::NameValue(_) => false,
    }
}

/// `#[path = "…"]` on a module declaration.
fn path_attribute(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

// ---------------------------------------------------------------------------
// Cycles
// ---------------------------------------------------------------------------

/// The cycles of `graph`: for every module on one, the shortest cycle
/// through it, each cycle once, starting and ending at its least module.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        if let Some(mut cycle) = shortest_cycle_through(graph, start) {
            cycle.pop();
            let least = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, m)| m.as_str())
                .map_or(0, |(i, _)| i);
            cycle.rotate_left(least);
            if let Some(first) = cycle.first().cloned() {
                cycle.push(first);
            }
            found.insert(cycle);
        }
    }
    found.into_iter().collect()
}

/// Breadth first from `start` back to it: `[start, …, start]`.
fn shortest_cycle_through(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(node).into_iter().flatten() {
            if next == start {
                let mut back = vec![start.to_owned()];
                let mut at = node;
                while at != start {
                    back.push(at.to_owned());
                    at = parent.get(at).copied().unwrap_or(start);
                }
                back.push(start.to_owned());
                back.reverse();
                return Some(back);
            }
            if !parent.contains_key(next.as_str()) {
                parent.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}
