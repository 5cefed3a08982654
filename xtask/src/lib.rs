//! Builds for the devices people own: which toolchain builds which binary for
//! which CPU, and the checks every build must pass.
//!
//! `cargo xtask dist` (the binary of this crate) makes release builds with it,
//! and the end-to-end tests (`tests/e2e/emulation.rs`) make debug builds with
//! it and run them under qemu, so what CI runs is built exactly the way the
//! shipped files are.
//!
//! Two toolchains, both installed from the registries by
//! `scripts/install-test-deps` (this crate installs nothing):
//! - **rust-lld** (rustup's target, nothing else): the worker and the CLI have
//!   no C code, so for the static musl targets rustup's own linker is enough
//!   (`.cargo/config.toml`). This is what the README promises a person who
//!   builds a worker by hand.
//! - **zig** (`cargo-zigbuild` with `ziglang`, both from PyPI): the master
//!   bundles SQLite's C code, which needs a C compiler for the target, and the
//!   armv7 builds link against glibc 2.31 (see [`Arch::Armv7`]). Zig builds
//!   go to a target dir of their own ([`ZIG_TARGET_SUBDIR`]): the two
//!   toolchains give the same crates different fingerprints, so sharing one
//!   dir would rebuild every dependency each time the other one ran.

pub mod elf;
pub mod sums;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The folder, inside the target dir, that zig builds use (see the crate's
/// documentation for why they do not share the main one).
pub const ZIG_TARGET_SUBDIR: &str = "zig";

/// A CPU family the project ships binaries for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// 64-bit ARM: Raspberry Pi OS 64-bit, Termux on a modern phone, ARM NAS
    /// boxes. Static musl, so it runs whatever the C library of the device.
    Aarch64,
    /// 32-bit ARM with hardware floating point: 32-bit Raspberry Pi OS
    /// (bullseye and bookworm). rustup does not serve
    /// `armv7-unknown-linux-musleabihf` here, so these builds are
    /// `armv7-unknown-linux-gnueabihf` linked by zig against glibc 2.31
    /// (bullseye's; bookworm's 2.36 runs them too, glibc keeps old symbol
    /// versions). Linking glibc statically instead would break name
    /// resolution: Pi OS's `nsswitch.conf` loads `libnss_mdns4_minimal`,
    /// which a static glibc binary can only load if it is the very same
    /// glibc; linked dynamically, the worker resolves `.local` names
    /// through the device's own avahi as every other program there does.
    Armv7,
    /// 64-bit PC: old laptops, x86 NAS boxes. Static musl.
    X86_64,
}

impl Arch {
    /// Every architecture, in the order `dist` builds and lists them.
    pub const ALL: [Arch; 3] = [Arch::Aarch64, Arch::Armv7, Arch::X86_64];

    /// Its name in file names and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64",
            Arch::Armv7 => "armv7",
            Arch::X86_64 => "x86_64",
        }
    }

    /// The Rust target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
            Arch::Armv7 => "armv7-unknown-linux-gnueabihf",
            Arch::X86_64 => "x86_64-unknown-linux-musl",
        }
    }

    /// What a binary built for it reports as its architecture
    /// (`std::env::consts::ARCH` there): the `architecture` of the worker's
    /// device profile and of `system_info`, and the ARCH column of
    /// `retire devices`.
    pub fn reported(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64",
            Arch::Armv7 => "arm",
            Arch::X86_64 => "x86_64",
        }
    }

    /// The oldest glibc its binaries must run with, for a target that links
    /// glibc dynamically (`None`: static musl, no C library needed).
    pub fn glibc(self) -> Option<elf::GlibcVersion> {
        match self {
            Arch::Armv7 => Some(ARMV7_GLIBC),
            Arch::Aarch64 | Arch::X86_64 => None,
        }
    }

    /// The ELF machine number (`e_machine`) of its executables.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Aarch64 => elf::EM_AARCH64,
            Arch::Armv7 => elf::EM_ARM,
            Arch::X86_64 => elf::EM_X86_64,
        }
    }

    /// The qemu user-mode emulator (Debian's `qemu-user-static`) that runs its
    /// binaries on another machine, and the folder holding the C library a
    /// dynamically linked binary loads (Debian's `libc6-armhf-cross`), given
    /// to qemu as `-L`.
    pub fn qemu(self) -> Emulator {
        match self {
            Arch::Aarch64 => Emulator {
                program: "qemu-aarch64-static",
                sysroot: None,
            },
            Arch::Armv7 => Emulator {
                program: "qemu-arm-static",
                sysroot: Some("/usr/arm-linux-gnueabihf"),
            },
            Arch::X86_64 => Emulator {
                program: "qemu-x86_64-static",
                sysroot: None,
            },
        }
    }

    /// The triple as `cargo zigbuild` takes it: with the glibc version to link
    /// against, for a glibc target.
    fn zig_triple(self) -> String {
        match self.glibc() {
            Some(glibc) => format!("{}.{}.{}", self.triple(), glibc.major, glibc.minor),
            None => self.triple().to_string(),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = DistError;

    fn from_str(text: &str) -> Result<Arch, DistError> {
        Arch::ALL
            .into_iter()
            .find(|arch| arch.name() == text)
            .ok_or_else(|| DistError::UnknownArch(text.to_string()))
    }
}

/// bullseye's glibc, the oldest 32-bit Raspberry Pi OS still in use.
pub const ARMV7_GLIBC: elf::GlibcVersion = elf::GlibcVersion {
    major: 2,
    minor: 31,
};

/// A qemu user-mode emulator, as [`Arch::qemu`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emulator {
    /// The program (on `PATH`).
    pub program: &'static str,
    /// The root of the target's C library, for `-L`, when its binaries link
    /// one dynamically.
    pub sysroot: Option<&'static str>,
}

impl Emulator {
    /// A command that runs `binary` under this emulator. Fails, naming the
    /// script that installs it, when the emulator or the target's C library
    /// is missing.
    pub fn command(&self, binary: &Path) -> Result<Command, DistError> {
        let program = which(self.program).ok_or(DistError::MissingTool {
            tool: self.program,
            install: "apt-get install qemu-user-static",
        })?;
        let mut command = Command::new(program);
        if let Some(sysroot) = self.sysroot {
            if !Path::new(sysroot).join("lib").is_dir() {
                return Err(DistError::MissingTool {
                    tool: sysroot,
                    install: "apt-get install libc6-armhf-cross",
                });
            }
            command.arg("-L").arg(sysroot);
        }
        command.arg(binary);
        Ok(command)
    }
}

/// One of the project's binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Binary {
    /// `retire-worker`, for every device that runs tasks.
    Worker,
    /// `retire`, the command-line client.
    Cli,
    /// `retire-master`, for the always-on box.
    Master,
}

impl Binary {
    /// Every binary, in the order `dist` lists them.
    pub const ALL: [Binary; 3] = [Binary::Worker, Binary::Cli, Binary::Master];

    /// The executable's name.
    pub fn name(self) -> &'static str {
        match self {
            Binary::Worker => "retire-worker",
            Binary::Cli => "retire",
            Binary::Master => "retire-master",
        }
    }

    /// The workspace package that builds it.
    pub fn package(self) -> &'static str {
        match self {
            Binary::Worker => "worker",
            Binary::Cli => "cli",
            Binary::Master => "master",
        }
    }

    /// Whether it compiles C code (the master's bundled SQLite), which needs
    /// a C compiler for the target.
    pub fn has_c_code(self) -> bool {
        matches!(self, Binary::Master)
    }

    /// The architectures `dist` builds it for: the master is not built for
    /// armv7 (a 32-bit Pi is a worker; the master wants a 64-bit box).
    pub fn archs(self) -> &'static [Arch] {
        match self {
            Binary::Worker | Binary::Cli => &Arch::ALL,
            Binary::Master => &[Arch::Aarch64, Arch::X86_64],
        }
    }

    /// The name of its file in the output folder of `dist`: `NAME-ARCH`.
    pub fn file_name(self, arch: Arch) -> String {
        format!("{}-{}", self.name(), arch.name())
    }
}

/// How a binary is linked for a target (see the crate's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Toolchain {
    /// rustup's target and its `rust-lld`: no C toolchain at all.
    RustLld,
    /// `cargo zigbuild`: zig as the C compiler and linker.
    Zig,
}

/// The toolchain that builds `binary` for `arch`: zig for C code or glibc,
/// rust-lld otherwise.
pub fn toolchain(binary: Binary, arch: Arch) -> Toolchain {
    if binary.has_c_code() || arch.glibc().is_some() {
        Toolchain::Zig
    } else {
        Toolchain::RustLld
    }
}

/// A cargo profile the builds use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Cargo's `dev`: quick to build, for the emulation tests.
    Debug,
    /// The workspace's `dist` profile: `release` stripped of symbols, for the
    /// files people download.
    Dist,
}

impl Profile {
    /// The name cargo's `--profile` takes.
    fn cargo_name(self) -> &'static str {
        match self {
            Profile::Debug => "dev",
            Profile::Dist => "dist",
        }
    }

    /// The folder cargo writes it to, under `TARGET_DIR/TRIPLE/`.
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Dist => "dist",
        }
    }
}

/// Why a build could not be made or does not pass its checks.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// An architecture this project does not build for.
    #[error("unknown architecture {0:?} (one of: aarch64, armv7, x86_64)")]
    UnknownArch(String),
    /// rustup's standard library for a target is not installed.
    #[error(
        "the Rust standard library for {0} is not installed: run scripts/install-test-deps \
         (rustup target add {0})"
    )]
    MissingTarget(&'static str),
    /// A program (or library folder) a build or an emulation needs is missing.
    #[error("{tool} is missing: run scripts/install-test-deps ({install})")]
    MissingTool {
        /// What is missing.
        tool: &'static str,
        /// How the script installs it.
        install: &'static str,
    },
    /// A program could not be started.
    #[error("could not run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A build command failed (its own output says why).
    #[error("`{command}` failed ({status})")]
    BuildFailed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A built file failed one of its checks.
    #[error("{path}: {problem}")]
    Check {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: elf::Problem,
    },
}

/// Builds the project's binaries for the devices, into one target dir.
#[derive(Debug, Clone)]
pub struct Builder {
    workspace: PathBuf,
    target_dir: PathBuf,
    profile: Profile,
    cargo: OsString,
    quiet: bool,
}

impl Builder {
    /// A builder for the workspace at `workspace`, writing to `target_dir`
    /// (zig builds to its [`ZIG_TARGET_SUBDIR`]) with `profile`. It runs the
    /// cargo that runs it (`CARGO`), or `cargo` from `PATH`.
    pub fn new(workspace: &Path, target_dir: &Path, profile: Profile) -> Builder {
        Builder {
            workspace: workspace.to_path_buf(),
            target_dir: target_dir.to_path_buf(),
            profile,
            cargo: std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
            quiet: false,
        }
    }

    /// Passes `--quiet` to cargo: only warnings and errors are printed.
    pub fn quiet(mut self, quiet: bool) -> Builder {
        self.quiet = quiet;
        self
    }

    /// Where the build of `binary` for `arch` is written.
    pub fn output(&self, binary: Binary, arch: Arch) -> PathBuf {
        self.target_dir_of(toolchain(binary, arch))
            .join(arch.triple())
            .join(self.profile.dir())
            .join(binary.name())
    }

    fn target_dir_of(&self, toolchain: Toolchain) -> PathBuf {
        match toolchain {
            Toolchain::RustLld => self.target_dir.clone(),
            Toolchain::Zig => self.target_dir.join(ZIG_TARGET_SUBDIR),
        }
    }

    /// Builds `binaries` for `arch` (one cargo run per toolchain), checks each
    /// result ([`check_binary`]) and returns their paths in the order given.
    /// Cargo's cache makes a build that is up to date cost a second.
    pub fn build(&self, arch: Arch, binaries: &[Binary]) -> Result<Vec<PathBuf>, DistError> {
        check_target_installed(arch, &self.workspace)?;
        for chain in [Toolchain::RustLld, Toolchain::Zig] {
            let group: Vec<Binary> = binaries
                .iter()
                .copied()
                .filter(|binary| toolchain(*binary, arch) == chain)
                .collect();
            if group.is_empty() {
                continue;
            }
            if chain == Toolchain::Zig {
                check_zig_installed()?;
            }
            self.run_cargo(chain, arch, &group)?;
        }
        binaries
            .iter()
            .map(|binary| {
                let path = self.output(*binary, arch);
                check_binary(&path, arch, self.profile)?;
                Ok(path)
            })
            .collect()
    }

    fn run_cargo(
        &self,
        chain: Toolchain,
        arch: Arch,
        binaries: &[Binary],
    ) -> Result<(), DistError> {
        let mut command = Command::new(&self.cargo);
        match chain {
            Toolchain::RustLld => command.arg("build").arg("--target").arg(arch.triple()),
            Toolchain::Zig => command
                .arg("zigbuild")
                .arg("--target")
                .arg(arch.zig_triple()),
        };
        command
            .arg("--profile")
            .arg(self.profile.cargo_name())
            .arg("--target-dir")
            .arg(self.target_dir_of(chain));
        for binary in binaries {
            command
                .arg("-p")
                .arg(binary.package())
                .arg("--bin")
                .arg(binary.name());
        }
        if self.quiet {
            command.arg("--quiet");
        }
        command.current_dir(&self.workspace).stdin(Stdio::null());
        let line = format!("{command:?}").replace('"', "");
        let status = command.status().map_err(|source| DistError::Spawn {
            program: self.cargo.to_string_lossy().into_owned(),
            source,
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(DistError::BuildFailed {
                command: line,
                status,
            })
        }
    }
}

/// Checks a built file: an ELF executable for `arch`; statically linked, or
/// (glibc targets) needing no glibc newer than [`Arch::glibc`]; and, for
/// [`Profile::Dist`], stripped of its symbol table.
pub fn check_binary(path: &Path, arch: Arch, profile: Profile) -> Result<(), DistError> {
    let bytes = std::fs::read(path).map_err(|source| DistError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let fail = |problem| DistError::Check {
        path: path.to_path_buf(),
        problem,
    };
    let header = elf::Header::parse(&bytes).map_err(fail)?;
    if header.machine != arch.elf_machine() {
        return Err(fail(elf::Problem::Machine {
            found: header.machine,
            wanted: arch.elf_machine(),
        }));
    }
    match arch.glibc() {
        None if header.interpreter(&bytes).map_err(fail)?.is_some() => {
            return Err(fail(elf::Problem::Dynamic));
        }
        None => {}
        Some(ceiling) => {
            if let Some(newest) = elf::glibc_versions(&bytes).into_iter().max() {
                if newest > ceiling {
                    return Err(fail(elf::Problem::GlibcTooNew { newest, ceiling }));
                }
            }
        }
    }
    if profile == Profile::Dist && header.has_symbol_table(&bytes).map_err(fail)? {
        return Err(fail(elf::Problem::NotStripped));
    }
    Ok(())
}

/// Fails unless rustup's standard library for `arch` is installed (in the
/// sysroot of the `rustc` that builds in `workspace`).
fn check_target_installed(arch: Arch, workspace: &Path) -> Result<(), DistError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DistError::Spawn {
            program: rustc.to_string_lossy().into_owned(),
            source,
        })?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if sysroot
        .join("lib/rustlib")
        .join(arch.triple())
        .join("lib")
        .is_dir()
    {
        Ok(())
    } else {
        Err(DistError::MissingTarget(arch.triple()))
    }
}

/// Fails unless `cargo zigbuild` can run: `cargo-zigbuild` on `PATH` and zig,
/// as a `zig` program or Python's `ziglang` package (where cargo-zigbuild
/// looks for it).
fn check_zig_installed() -> Result<(), DistError> {
    const INSTALL: &str = "pip install ziglang cargo-zigbuild";
    if which("cargo-zigbuild").is_none() {
        return Err(DistError::MissingTool {
            tool: "cargo-zigbuild",
            install: INSTALL,
        });
    }
    let zig_on_path = which("zig").is_some();
    let ziglang = || {
        Command::new("python3")
            .args(["-c", "import ziglang"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if zig_on_path || ziglang() {
        Ok(())
    } else {
        Err(DistError::MissingTool {
            tool: "zig (Python package ziglang)",
            install: INSTALL,
        })
    }
}

/// The first executable file called `name` in a folder of `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            file.metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_for_every_arch_has_one_toolchain_and_a_file_name() {
        fn check(binary: Binary, arch: Arch, expect: (Toolchain, &str)) {
            assert_eq!(
                (toolchain(binary, arch), binary.file_name(arch).as_str()),
                expect,
                "{binary:?} for {arch}"
            );
        }
        check(
            Binary::Worker,
            Arch::Aarch64,
            (Toolchain::RustLld, "retire-worker-aarch64"),
        );
        check(
            Binary::Cli,
            Arch::X86_64,
            (Toolchain::RustLld, "retire-x86_64"),
        );
        check(
            Binary::Worker,
            Arch::Armv7,
            (Toolchain::Zig, "retire-worker-armv7"),
        );
        check(Binary::Cli, Arch::Armv7, (Toolchain::Zig, "retire-armv7"));
        check(
            Binary::Master,
            Arch::Aarch64,
            (Toolchain::Zig, "retire-master-aarch64"),
        );
    }

    #[test]
    fn zig_links_armv7_against_bullseyes_glibc() {
        assert_eq!(
            Arch::Armv7.zig_triple(),
            "armv7-unknown-linux-gnueabihf.2.31"
        );
        assert_eq!(Arch::Aarch64.zig_triple(), "aarch64-unknown-linux-musl");
    }

    #[test]
    fn architectures_parse_by_name_only() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().ok(), Some(arch));
        }
        assert!("arm64".parse::<Arch>().is_err());
    }

    #[test]
    fn a_missing_emulator_is_an_error_that_names_the_install_script() {
        let missing = Emulator {
            program: "qemu-nowhere-static",
            sysroot: None,
        };
        let error = missing
            .command(Path::new("retire-worker"))
            .expect_err("no such emulator");
        assert!(
            error.to_string().contains("scripts/install-test-deps"),
            "{error}"
        );
        let no_libc = Emulator {
            program: "sh",
            sysroot: Some("/nowhere/arm-linux-gnueabihf"),
        };
        let error = no_libc
            .command(Path::new("retire-worker"))
            .expect_err("no such C library");
        assert!(error.to_string().contains("libc6-armhf-cross"), "{error}");
    }

    #[test]
    fn the_worker_and_the_cli_link_without_a_c_toolchain_on_musl() {
        for binary in [Binary::Worker, Binary::Cli] {
            for arch in [Arch::Aarch64, Arch::X86_64] {
                assert_eq!(toolchain(binary, arch), Toolchain::RustLld);
            }
        }
    }
}
