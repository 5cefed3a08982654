//! `cargo xtask`: the project's own build tasks (the alias is in
//! `.cargo/config.toml`).
//!
//! `cargo xtask dist` cross-builds every binary for every device the project
//! ships for, stripped, into one folder with a `SHA256SUMS` list. It installs
//! nothing: `scripts/install-test-deps` installs the toolchains, and a
//! missing one is named with the command that installs it.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Instant;
use xtask::sums::{render, sha256_file, SUMS_FILE};
use xtask::{Arch, Binary, Builder, Profile};

/// The folder, inside the target dir, that `dist` writes its files to.
const DIST_SUBDIR: &str = "devices";

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Retire-Cluster's build tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Cross-build stripped release binaries for every device (retire-worker
    /// and retire for aarch64, armv7 and x86_64; retire-master for aarch64
    /// and x86_64) into one folder, with SHA256SUMS.
    Dist(DistArgs),
}

#[derive(Debug, Args)]
struct DistArgs {
    /// Build only for this architecture (aarch64, armv7, x86_64); repeat for
    /// several. Default: all of them.
    #[arg(long = "arch", value_name = "ARCH")]
    archs: Vec<Arch>,
    /// Where the files and SHA256SUMS go. Default: TARGET_DIR/devices.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Dist(args) => dist(&args),
    }
}

fn dist(args: &DistArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives in the workspace's folder")?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir.join(DIST_SUBDIR));
    let archs: Vec<Arch> = if args.archs.is_empty() {
        Arch::ALL.to_vec()
    } else {
        Arch::ALL
            .into_iter()
            .filter(|arch| args.archs.contains(arch))
            .collect()
    };

    let builder = Builder::new(workspace, &target_dir, Profile::Dist);
    let mut built = Vec::new();
    for arch in archs {
        let binaries: Vec<Binary> = Binary::ALL
            .into_iter()
            .filter(|binary| binary.archs().contains(&arch))
            .collect();
        eprintln!("dist: building {} for {arch}", names(&binaries));
        let paths = builder
            .build(arch, &binaries)
            .with_context(|| format!("building for {arch}"))?;
        built.extend(
            binaries
                .iter()
                .zip(paths)
                .map(|(binary, path)| (binary.file_name(arch), path)),
        );
    }

    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut sums = Vec::new();
    println!("{:<24} {:>10} {:>8}", "FILE", "BYTES", "MB");
    for (name, path) in &built {
        let copy = out.join(name);
        // A fresh file, not one overwritten in place: a copy someone is
        // running keeps its old contents.
        let _ = std::fs::remove_file(&copy);
        std::fs::copy(path, &copy)
            .with_context(|| format!("copying {} to {}", path.display(), copy.display()))?;
        let size = std::fs::metadata(&copy)
            .with_context(|| format!("reading {}", copy.display()))?
            .len();
        let digest = sha256_file(&copy).with_context(|| format!("hashing {}", copy.display()))?;
        println!("{name:<24} {size:>10} {:>8.2}", size as f64 / 1e6);
        sums.push((name.clone(), digest));
    }
    let list = out.join(SUMS_FILE);
    std::fs::write(&list, render(&sums)).with_context(|| format!("writing {}", list.display()))?;
    println!(
        "{} files and {SUMS_FILE} in {} (check: cd {} && sha256sum -c {SUMS_FILE}); took {:.0} s",
        built.len(),
        out.display(),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn names(binaries: &[Binary]) -> String {
    binaries
        .iter()
        .map(|binary| binary.name())
        .collect::<Vec<_>>()
        .join(", ")
}
