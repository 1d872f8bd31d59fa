//! Module dependency resolution: requested names -> every module they need, in load order.
//!
//! Pure over a [`ModuleCatalog`], so synthetic graphs test it as well as a real tree.
//! Hard dependencies (`depends=`) must resolve to a module or a built-in; soft ones
//! (`softdep=`) may name an alias and are only warned about when nothing provides them.

use super::modinfo::{normalize_module_name, ModInfo};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The modules every initramfs carries unless told otherwise: virtio block devices,
/// the lower filesystems, the overlay, loop devices for `ovl.image=`, and
/// device-mapper with dm-verity for `ovl.verity=` (loaded only when asked for:
/// see `crate::verity::MODULES`; Debian's dm_verity also needs reed_solomon and
/// dm_bufio, which the resolver adds).
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "squashfs",
    "erofs",
    "overlay",
    "loop",
    "dm_mod",
    "dm_verity",
];

/// One module file found in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    pub name: String,
    pub path: PathBuf,
    pub info: ModInfo,
}

/// What a name is in a kernel's module tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Module(ModuleFile),
    Builtin,
    Missing,
}

/// What provides an alias (only consulted for soft dependencies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasProviders {
    /// A built-in module provides it: nothing to load.
    Builtin,
    /// These module names provide it; empty when nothing does.
    Modules(Vec<String>),
}

/// A kernel's module tree, as seen by the resolver.
pub trait ModuleCatalog {
    /// The module with this normalised name.
    fn lookup(&mut self, name: &str) -> Result<Lookup>;
    /// Which modules answer to this alias (exact match).
    fn alias_providers(&mut self, alias: &str) -> Result<AliasProviders>;
}

/// A module to put into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    pub name: String,
    /// Where the file is in the source tree.
    pub path: PathBuf,
    /// Modules of this resolution that must be loaded first (hard and pre-soft deps).
    pub depends: Vec<String>,
}

/// The result: modules in load order (every module after all of its `depends`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub modules: Vec<ResolvedModule>,
    /// Names that were asked for or depended on but are built into the kernel.
    pub builtin: Vec<String>,
    /// Soft dependencies nothing provides, and similar non-fatal findings.
    pub warnings: Vec<String>,
}

enum VisitState {
    InProgress,
    Done,
}

/// Why a name is being visited: for error messages and post-softdep ordering.
#[derive(Clone, Copy)]
enum Reason<'a> {
    Requested,
    NeededBy(&'a str),
    SoftAfter(&'a str),
}

struct Resolver<'c, C: ModuleCatalog> {
    catalog: &'c mut C,
    state: BTreeMap<String, VisitState>,
    /// The names currently being visited, outermost first: the path shown for a cycle.
    stack: Vec<String>,
    out: Resolution,
}

impl<C: ModuleCatalog> Resolver<'_, C> {
    fn note_builtin(&mut self, name: &str) {
        if !self.out.builtin.iter().any(|known| known == name) {
            self.out.builtin.push(name.to_string());
        }
    }

    /// Visits `name`; returns whether it became (or already was) a module of the result.
    fn visit(&mut self, name: &str, reason: Reason<'_>) -> Result<bool> {
        let name = normalize_module_name(name);
        match self.state.get(&name) {
            Some(VisitState::Done) => return Ok(self.out.modules.iter().any(|m| m.name == name)),
            Some(VisitState::InProgress) => {
                if let Reason::SoftAfter(_) = reason {
                    // A post-softdep back onto the chain being loaded adds no order.
                    return Ok(false);
                }
                let start = self.stack.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle = self.stack[start..].to_vec();
                cycle.push(name.clone());
                bail!("module dependency cycle: {}", cycle.join(" -> "));
            }
            None => {}
        }
        let file = match self.catalog.lookup(&name)? {
            Lookup::Module(file) => file,
            Lookup::Builtin => {
                self.state.insert(name.clone(), VisitState::Done);
                self.note_builtin(&name);
                return Ok(false);
            }
            Lookup::Missing => match reason {
                Reason::Requested => bail!("module `{name}` was requested but is neither a module file in the tree nor built in"),
                Reason::NeededBy(parent) => bail!("module `{name}`, needed by `{parent}`, is neither a module file in the tree nor built in"),
                Reason::SoftAfter(_) => return Ok(false),
            },
        };
        self.state.insert(name.clone(), VisitState::InProgress);
        self.stack.push(name.clone());

        let mut depends = Vec::new();
        if let Reason::SoftAfter(before) = reason {
            depends.push(before.to_string());
        }
        for dep in &file.info.depends {
            if self.visit(dep, Reason::NeededBy(&name))? {
                depends.push(normalize_module_name(dep));
            }
        }
        for soft in &file.info.softdep_pre {
            for provider in self.soft_providers(soft, &name)? {
                if self.visit(&provider, Reason::NeededBy(&name))? {
                    depends.push(provider);
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        depends.retain(|dep| seen.insert(dep.clone()));

        self.stack.pop();
        self.state.insert(name.clone(), VisitState::Done);
        self.out.modules.push(ResolvedModule {
            name: name.clone(),
            path: file.path.clone(),
            depends,
        });

        for soft in &file.info.softdep_post {
            for provider in self.soft_providers(soft, &name)? {
                self.visit(&provider, Reason::SoftAfter(&name))?;
            }
        }
        Ok(true)
    }

    /// Module names that satisfy the soft dependency `soft` of `owner`: the module
    /// of that name, else the modules with that alias; none when built in or absent.
    fn soft_providers(&mut self, soft: &str, owner: &str) -> Result<Vec<String>> {
        let as_name = normalize_module_name(soft);
        match self.catalog.lookup(&as_name)? {
            Lookup::Module(_) => return Ok(vec![as_name]),
            Lookup::Builtin => {
                self.note_builtin(&as_name);
                return Ok(Vec::new());
            }
            Lookup::Missing => {}
        }
        match self.catalog.alias_providers(soft)? {
            AliasProviders::Builtin => Ok(Vec::new()),
            AliasProviders::Modules(names) if names.is_empty() => {
                self.out.warnings.push(format!(
                    "soft dependency `{soft}` of `{owner}` is provided by no module and nothing built in; left out"
                ));
                Ok(Vec::new())
            }
            AliasProviders::Modules(names) => Ok(names),
        }
    }
}

/// Resolves `requested` (module names, `-` or `_`) and everything they need.
pub fn resolve<C: ModuleCatalog>(catalog: &mut C, requested: &[String]) -> Result<Resolution> {
    let mut resolver = Resolver {
        catalog,
        state: BTreeMap::new(),
        stack: Vec::new(),
        out: Resolution::default(),
    };
    for name in requested {
        resolver.visit(name, Reason::Requested)?;
    }
    Ok(resolver.out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An in-memory catalog: `(name, depends, pre, post, aliases)`.
    #[derive(Default)]
    pub(crate) struct FakeCatalog {
        modules: BTreeMap<String, ModInfo>,
        builtin: Vec<(String, Vec<String>)>,
    }

    impl FakeCatalog {
        pub(crate) fn module(mut self, name: &str, depends: &[&str]) -> Self {
            let info = ModInfo {
                name: Some(name.to_string()),
                depends: depends.iter().map(|d| d.to_string()).collect(),
                ..ModInfo::default()
            };
            self.modules.insert(name.to_string(), info);
            self
        }
        fn with(mut self, name: &str, edit: impl FnOnce(&mut ModInfo)) -> Self {
            edit(self.modules.get_mut(name).expect("module defined first"));
            self
        }
        fn builtin(mut self, name: &str, aliases: &[&str]) -> Self {
            self.builtin.push((
                name.to_string(),
                aliases.iter().map(|a| a.to_string()).collect(),
            ));
            self
        }
    }

    impl ModuleCatalog for FakeCatalog {
        fn lookup(&mut self, name: &str) -> Result<Lookup> {
            if self.builtin.iter().any(|(b, _)| b == name) {
                return Ok(Lookup::Builtin);
            }
            Ok(match self.modules.get(name) {
                Some(info) => Lookup::Module(ModuleFile {
                    name: name.to_string(),
                    path: PathBuf::from(format!("kernel/{name}.ko")),
                    info: info.clone(),
                }),
                None => Lookup::Missing,
            })
        }
        fn alias_providers(&mut self, alias: &str) -> Result<AliasProviders> {
            if self
                .builtin
                .iter()
                .any(|(_, aliases)| aliases.iter().any(|a| a == alias))
            {
                return Ok(AliasProviders::Builtin);
            }
            Ok(AliasProviders::Modules(
                self.modules
                    .iter()
                    .filter(|(_, info)| info.aliases.iter().any(|a| a == alias))
                    .map(|(name, _)| name.clone())
                    .collect(),
            ))
        }
    }

    fn names(resolution: &Resolution) -> Vec<&str> {
        resolution.modules.iter().map(|m| m.name.as_str()).collect()
    }

    fn request(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn diamond_loads_the_shared_dependency_once_and_first() {
        let mut catalog = FakeCatalog::default()
            .module("top", &["left", "right"])
            .module("left", &["base"])
            .module("right", &["base"])
            .module("base", &[]);
        let resolution = resolve(&mut catalog, &request(&["top"])).unwrap();
        assert_eq!(names(&resolution), ["base", "left", "right", "top"]);
        let top = &resolution.modules[3];
        assert_eq!(top.depends, ["left", "right"]);
        assert_eq!(resolution.modules[1].depends, ["base"]);
    }

    #[test]
    fn cycle_is_an_error_naming_the_modules_on_it() {
        let mut catalog = FakeCatalog::default()
            .module("a", &["b"])
            .module("b", &["c"])
            .module("c", &["a"]);
        let error = resolve(&mut catalog, &request(&["a"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("a -> b -> c -> a"), "{error}");
    }

    #[test]
    fn missing_dependency_names_the_module_and_who_needs_it() {
        let mut catalog = FakeCatalog::default().module("a", &["ghost"]);
        let error = resolve(&mut catalog, &request(&["a"]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`ghost`") && error.contains("needed by `a`"),
            "{error}"
        );
        let error = resolve(&mut catalog, &request(&["nope"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("`nope` was requested"), "{error}");
    }

    #[test]
    fn builtin_names_are_skipped_not_errors_and_dashes_match_underscores() {
        let mut catalog = FakeCatalog::default()
            .module("virtio_blk", &["virtio"])
            .builtin("virtio", &[]);
        let resolution = resolve(&mut catalog, &request(&["virtio-blk", "virtio"])).unwrap();
        assert_eq!(names(&resolution), ["virtio_blk"]);
        assert!(resolution.modules[0].depends.is_empty());
        assert_eq!(resolution.builtin, ["virtio"]);
    }

    #[test]
    fn soft_dependencies_resolve_by_alias_and_post_ones_load_after() {
        let mut catalog = FakeCatalog::default()
            .module("fs", &[])
            .module("fast_crc", &[])
            .module("helper", &[])
            .with("fast_crc", |i| i.aliases.push("crc".into()))
            .with("fs", |i| {
                i.softdep_pre = vec!["crc".into(), "absent".into(), "builtin-alias".into()];
                i.softdep_post = vec!["helper".into()];
            })
            .builtin("core", &["builtin-alias"]);
        let resolution = resolve(&mut catalog, &request(&["fs"])).unwrap();
        assert_eq!(names(&resolution), ["fast_crc", "fs", "helper"]);
        assert_eq!(resolution.modules[1].depends, ["fast_crc"]);
        assert_eq!(resolution.modules[2].depends, ["fs"]);
        assert_eq!(resolution.warnings.len(), 1, "{:?}", resolution.warnings);
        assert!(resolution.warnings[0].contains("`absent`"));
    }
}
