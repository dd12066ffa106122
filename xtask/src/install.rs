//! `cargo xtask install [--root DIR] [--prefix PREFIX]`: puts the release daemon, its systemd
//! unit, an empty policy directory and the documentation on a host (or under a staging root
//! for packaging). The Vagrant VM (`vagrant/provision.sh`) installs with it.
//!
//! Layout, under `ROOT` (default `/`), with `PREFIX` (default `/usr/local`):
//!
//! ```text
//! PREFIX/bin/react-gateway                      the daemon and CLI
//! /etc/systemd/system/react-gateway.service     dist/react-gateway.service, paths for PREFIX
//! /etc/react-gateway/policies/                  created empty (record-only) if missing
//! PREFIX/share/doc/react-gateway/               README.md, ARCHITECTURE.md, policies.md,
//!                                               examples/ (the shipped policies and cases)
//! ```
//!
//! Existing policies are never touched. The binary is replaced by a rename, so a running daemon
//! keeps its old file until it restarts.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

/// Where `dist/react-gateway.service` expects the install (rewritten for another prefix).
const UNIT_PREFIX: &str = "/usr/local";
const UNIT: &str = "etc/systemd/system/react-gateway.service";
const POLICY_DIR: &str = "etc/react-gateway/policies";

/// What [`install`] wrote, for the summary and the tests.
#[derive(Debug)]
pub struct Installed {
    pub binary: PathBuf,
    pub unit: PathBuf,
    pub policy_dir: PathBuf,
    /// `false` when the policy directory existed (its contents were left as they were).
    pub policy_dir_created: bool,
    pub doc_dir: PathBuf,
}

pub fn run(args: &[String]) -> Result<()> {
    let (root, prefix) = parse(args)?;
    setup::run()?;
    util::build_release()?;
    let installed = install(&util::daemon_bin(), &util::workspace_root(), &root, &prefix)?;
    println!("installed {}", installed.binary.display());
    println!("installed {}", installed.unit.display());
    println!("installed {}", installed.doc_dir.display());
    if installed.policy_dir_created {
        println!(
            "created {} (empty: the daemon starts in record-only mode)",
            installed.policy_dir.display()
        );
    } else {
        println!("kept {} as it was", installed.policy_dir.display());
    }
    if root == Path::new("/") && Path::new("/run/systemd/system").exists() {
        util::run_cmd("systemctl", &["daemon-reload"])?;
        println!("next: systemctl enable --now react-gateway");
    } else if root == Path::new("/") {
        println!("systemd is not running here: start the daemon with `react-gateway run`");
    }
    Ok(())
}

fn parse(args: &[String]) -> Result<(PathBuf, PathBuf)> {
    let (mut root, mut prefix) = (PathBuf::from("/"), PathBuf::from(UNIT_PREFIX));
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--root" => &mut root,
            "--prefix" => &mut prefix,
            other => bail!(
                "install: unknown argument {other} (usage: install [--root DIR] [--prefix PREFIX])"
            ),
        };
        *slot = PathBuf::from(
            args.next()
                .with_context(|| format!("{flag} needs a value"))?,
        );
    }
    if !prefix.is_absolute() || !root.is_absolute() {
        bail!("install: --root and --prefix must be absolute paths");
    }
    Ok((root, prefix))
}

/// Installs `binary` and the files of the workspace at `workspace` under `root` for `prefix`.
pub fn install(binary: &Path, workspace: &Path, root: &Path, prefix: &Path) -> Result<Installed> {
    if !binary.is_file() {
        bail!(
            "{} is missing: build it first (cargo xtask build)",
            binary.display()
        );
    }
    let under = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    let prefix_dir = under(prefix);

    let installed_binary = prefix_dir.join("bin/react-gateway");
    stage(&installed_binary, 0o755, |tmp| {
        fs::copy(binary, tmp)?;
        strip_debug(tmp);
        Ok(())
    })
    .with_context(|| format!("copying {}", binary.display()))?;

    let template = fs::read_to_string(workspace.join("dist/react-gateway.service"))
        .context("reading dist/react-gateway.service")?;
    let prefix_text = prefix
        .to_str()
        .context("the prefix is not valid UTF-8")?
        .trim_end_matches('/');
    let unit = root.join(UNIT);
    write_replacing(&unit, &template.replace(UNIT_PREFIX, prefix_text), 0o644)?;

    let policy_dir = root.join(POLICY_DIR);
    let policy_dir_created = !policy_dir.exists();
    fs::create_dir_all(&policy_dir)
        .with_context(|| format!("creating {}", policy_dir.display()))?;

    let doc_dir = prefix_dir.join("share/doc/react-gateway");
    for (from, to) in [
        ("README.md", "README.md"),
        ("ARCHITECTURE.md", "ARCHITECTURE.md"),
        ("policies/README.md", "policies.md"),
    ] {
        copy_replacing(&workspace.join(from), &doc_dir.join(to), 0o644)?;
    }
    copy_tree(
        &workspace.join("policies/examples"),
        &doc_dir.join("examples"),
    )?;

    Ok(Installed {
        binary: installed_binary,
        unit,
        policy_dir,
        policy_dir_created,
        doc_dir,
    })
}

/// Writes `to` through a temporary file in its directory and a rename: a reader (or a running
/// binary) sees the old file or the new one, never half of one.
fn write_replacing(to: &Path, contents: &str, mode: u32) -> Result<()> {
    stage(to, mode, |tmp| fs::write(tmp, contents))
}

fn copy_replacing(from: &Path, to: &Path, mode: u32) -> Result<()> {
    stage(to, mode, |tmp| fs::copy(from, tmp).map(drop))
        .with_context(|| format!("copying {}", from.display()))
}

fn stage(to: &Path, mode: u32, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = to.parent().context("a target file has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = to.file_name().context("a target file has no name")?;
    let tmp = dir.join(format!(".{}.installing", name.to_string_lossy()));
    let result = fill(&tmp)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)))
        .and_then(|()| fs::rename(&tmp, to));
    if result.is_err() {
        // Best effort: the error below is what matters.
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("installing {}", to.display()))
}

/// The release profile keeps line tables for profiling (about 120 MB); an installed binary
/// does without them (about 20 MB). The embedded eBPF object is data and is kept. Without
/// `strip` (binutils) the binary is installed as built.
fn strip_debug(binary: &Path) {
    let stripped = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        eprintln!(
            "install: `strip --strip-debug` failed or is missing; installing with debug info"
        );
    }
}

/// Copies the files of `from` (recursively) into `to`, replacing files of the same name.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()))?;
        } else {
            copy_replacing(&path, &to.join(entry.file_name()), 0o644)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// The release daemon `cargo xtask test` built (it sets `REACT_GATEWAY_BIN`).
    fn daemon() -> PathBuf {
        std::env::var_os("REACT_GATEWAY_BIN").map_or_else(util::daemon_bin, PathBuf::from)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rg-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn run(program: &Path, args: &[&str]) -> std::process::Output {
        Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    /// A staged install under a scratch root: every file in place with its mode, the unit's
    /// paths follow the prefix and pass `systemd-analyze verify`, the installed binary runs and
    /// accepts the installed examples, and a second install keeps the operator's policies.
    #[test]
    fn install_stages_a_working_layout_and_keeps_policies() {
        let root = scratch("stage");
        let prefix = Path::new("/opt/rg");
        let workspace = util::workspace_root();
        let first = install(&daemon(), &workspace, &root, prefix).unwrap();

        assert_eq!(first.binary, root.join("opt/rg/bin/react-gateway"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&first.binary), 0o755);
        let size = |p: &Path| fs::metadata(p).unwrap().len();
        assert!(
            size(&first.binary) < size(&daemon()) / 2,
            "the installed binary keeps its debug info"
        );
        assert_eq!(mode(&first.unit), 0o644);
        assert!(first.policy_dir_created);
        assert_eq!(fs::read_dir(&first.policy_dir).unwrap().count(), 0);

        let unit = fs::read_to_string(&first.unit).unwrap();
        assert!(
            unit.contains("ExecStart=/opt/rg/bin/react-gateway run\n"),
            "{unit}"
        );
        assert!(
            unit.contains("file:/opt/rg/share/doc/react-gateway/README.md"),
            "{unit}"
        );
        assert!(!unit.contains("/usr/local"), "{unit}");

        // systemd checks the unit against the real file system: point it at the staged binary.
        let checked = root.join("react-gateway.service");
        fs::write(
            &checked,
            unit.replace("/opt/rg/", &format!("{}/opt/rg/", root.display())),
        )
        .unwrap();
        let verify = run(
            Path::new("systemd-analyze"),
            &["verify", checked.to_str().unwrap()],
        );
        assert!(
            verify.status.success() && verify.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&verify.stderr)
        );

        let version = run(&first.binary, &["--version"]);
        assert!(version.status.success());
        assert!(String::from_utf8_lossy(&version.stdout).starts_with("react-gateway "));
        let examples = first.doc_dir.join("examples");
        let check = run(
            &first.binary,
            &["policy", "check", examples.to_str().unwrap()],
        );
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        for doc in [
            "README.md",
            "ARCHITECTURE.md",
            "policies.md",
            "examples/tests",
        ] {
            assert!(first.doc_dir.join(doc).exists(), "{doc} not installed");
        }

        // The operator's policy survives a reinstall; the binary is replaced in place.
        let mine = first.policy_dir.join("mine.toml");
        fs::write(&mine, "version = 1\n").unwrap();
        let second = install(&daemon(), &workspace, &root, prefix).unwrap();
        assert!(!second.policy_dir_created);
        assert_eq!(fs::read_to_string(&mine).unwrap(), "version = 1\n");
        assert!(run(&second.binary, &["--version"]).status.success());
        let leftovers: Vec<_> = fs::read_dir(root.join("opt/rg/bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["react-gateway"]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn install_refuses_a_missing_binary_and_bad_arguments() {
        let root = scratch("missing");
        let error = install(
            &root.join("nope"),
            &util::workspace_root(),
            &root,
            Path::new("/usr/local"),
        )
        .unwrap_err();
        assert!(error.to_string().contains("is missing"), "{error}");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "nothing written");
        fs::remove_dir_all(&root).unwrap();

        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(parse(&args(&["--root"])).is_err());
        assert!(parse(&args(&["--prefix", "relative"])).is_err());
        assert!(parse(&args(&["--frobnicate"])).is_err());
        let (root, prefix) = parse(&args(&["--root", "/tmp/x", "--prefix", "/opt/rg"])).unwrap();
        assert_eq!(
            (root.as_path(), prefix.as_path()),
            (Path::new("/tmp/x"), Path::new("/opt/rg"))
        );
    }
}
