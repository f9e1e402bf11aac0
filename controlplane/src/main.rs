//! `sora`: the node binary, with Sora's operator commands.
//!
//! ```text
//! sora start  [--config FILE | --no-config]   run in the foreground, log to stderr
//! sora daemon [--config FILE | --no-config]   start detached; exit 0 once it serves
//! sora stop   [--config FILE | --no-config]   SIGTERM the daemon, wait for it to exit
//! sora version
//! ```
//!
//! Without `--config`, the configuration is `etc/sora.conf` (Sora's package
//! layout) if it exists, else `sora.conf`, else the built-in defaults; paths
//! are relative to the working directory. `daemon` keeps its pid in
//! `<data_dir>/sora.pid` and its output in `<data_dir>/sora.log`.
//!
//! Exit status: 0 success, 1 failure, 2 bad arguments or configuration.

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use controlplane::config::Config;

const USAGE: &str = "usage: sora <start|daemon|stop|version> [--config FILE | --no-config]

  start    run the node in the foreground, logging to stderr
  daemon   start the node in the background (log: <data_dir>/sora.log,
           pid: <data_dir>/sora.pid); exits once the API and signaling
           ports accept connections
  stop     stop the node started by `daemon` (SIGTERM, then wait)
  version  print the version

  --config FILE  the sora.conf to use; without it: etc/sora.conf, else
                 sora.conf, else built-in defaults
  --no-config    use the built-in defaults, read no file";

/// How long `daemon` waits for the node to accept connections.
const DAEMON_START_DEADLINE: Duration = Duration::from_secs(20);
/// How long `stop` waits for the node to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// Lines of the log `daemon` prints when the node did not come up.
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, PartialEq, Eq)]
enum Cmd {
    Start,
    Daemon,
    Stop,
    Version,
    Help,
}

/// Where the configuration comes from.
#[derive(Debug, PartialEq, Eq, Clone)]
enum ConfigSource {
    /// `--config FILE`, or none given: the first of the default paths present.
    Auto(Option<PathBuf>),
    /// `--no-config`.
    Defaults,
}

#[derive(Debug, PartialEq, Eq)]
struct Args {
    cmd: Cmd,
    config: ConfigSource,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut cmd = None;
    let mut config = ConfigSource::Auto(None);
    let mut config_given = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut set_config = |c: ConfigSource| {
            if std::mem::replace(&mut config_given, true) {
                return Err("--config / --no-config given twice".to_owned());
            }
            config = c;
            Ok(())
        };
        match arg.as_str() {
            "--config" | "-c" => {
                let file = it.next().ok_or("--config needs a FILE")?;
                set_config(ConfigSource::Auto(Some(PathBuf::from(file))))?;
            }
            "--no-config" => set_config(ConfigSource::Defaults)?,
            s if s.starts_with("--config=") => {
                let file = &s["--config=".len()..];
                if file.is_empty() {
                    return Err("--config needs a FILE".into());
                }
                set_config(ConfigSource::Auto(Some(PathBuf::from(file))))?;
            }
            "start" | "daemon" | "stop" | "version" | "--version" | "-V" | "help" | "--help"
            | "-h"
                if cmd.is_none() =>
            {
                cmd = Some(match arg.as_str() {
                    "start" => Cmd::Start,
                    "daemon" => Cmd::Daemon,
                    "stop" => Cmd::Stop,
                    "version" | "--version" | "-V" => Cmd::Version,
                    _ => Cmd::Help,
                });
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Args {
        cmd: cmd.ok_or("no command given")?,
        config,
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sora: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.cmd {
        Cmd::Version => {
            println!("sora {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Cmd::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let (config, file) = match load_config(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sora: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.cmd {
        Cmd::Start => start(config, file.as_deref()),
        Cmd::Daemon => daemon(&config, file.as_deref()),
        Cmd::Stop => stop(&config),
        Cmd::Version | Cmd::Help => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sora: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration and the file it came from (`None`: built-in defaults).
fn load_config(source: &ConfigSource) -> Result<(Config, Option<PathBuf>), String> {
    let path = match source {
        ConfigSource::Defaults => None,
        ConfigSource::Auto(Some(p)) => Some(p.clone()),
        ConfigSource::Auto(None) => ["etc/sora.conf", "sora.conf"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    };
    match path {
        None => Ok((Config::default(), None)),
        Some(p) => {
            let config = Config::load(&p).map_err(|e| e.to_string())?;
            Ok((config, Some(p)))
        }
    }
}

/// `sora start`: runs the node in this process until SIGTERM or SIGINT.
fn start(config: Config, file: Option<&Path>) -> Result<(), String> {
    // RUST_LOG, when set, refines what log_level says.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.log_level.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match file {
        Some(f) => {
            tracing::info!(config = %f.display(), version = env!("CARGO_PKG_VERSION"), "starting")
        }
        None => tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "starting with the built-in configuration"
        ),
    }
    for (line, key) in &config.ignored_keys {
        tracing::warn!("line {line}: {key} is accepted for compatibility and ignored");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sora-control")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime
        .block_on(run_node(config))
        .map_err(|e| format!("{e:#}"))?;
    tracing::info!("stopped");
    Ok(())
}

async fn run_node(config: Config) -> anyhow::Result<()> {
    controlplane::node::run(config).await
}

/// `sora daemon`: starts `sora start` detached and waits until it serves.
fn daemon(config: &Config, file: Option<&Path>) -> Result<(), String> {
    let data_dir = &config.data_dir;
    fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", data_dir.display()))?;
    let pid_path = data_dir.join("sora.pid");
    if let Some(pid) = read_pid(&pid_path)? {
        if process_alive(pid) {
            return Err(format!(
                "already running (pid {pid}, from {})",
                pid_path.display()
            ));
        }
    }
    let api = SocketAddr::new(reachable(config.api_bind_address()), config.api_port);
    let signaling = SocketAddr::new(config.local_address(), config.signaling_port);
    for (what, addr) in [("api_port", api), ("signaling_port", signaling)] {
        if connects(addr) {
            return Err(format!(
                "{what}: something already accepts connections on {addr}"
            ));
        }
    }

    let log_path = data_dir.join("sora.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;

    let exe = std::env::current_exe().map_err(|e| format!("cannot find the sora binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("start");
    match file {
        Some(f) => {
            let abs = fs::canonicalize(f).unwrap_or_else(|_| f.to_owned());
            cmd.arg("--config").arg(abs);
        }
        None => {
            cmd.arg("--no-config");
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // SAFETY: setsid is async-signal-safe and touches no memory of ours; it
    // detaches the child from our session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the node: {e}"))?;
    let pid = child.id();
    write_pid(&pid_path, pid)?;

    let deadline = Instant::now() + DAEMON_START_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let _ = fs::remove_file(&pid_path);
                return Err(format!(
                    "the node exited during start ({status}); last lines of {}:\n{}",
                    log_path.display(),
                    log_tail(&log_path, log_start)
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot watch the node (pid {pid}): {e}")),
        }
        if connects(api) && connects(signaling) {
            println!(
                "sora started (pid {pid}); api {api}, signaling {signaling}; log {}",
                log_path.display()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            // A node that cannot come up is stopped, not left half-running.
            signal(pid, libc::SIGTERM);
            let stop_by = Instant::now() + Duration::from_secs(5);
            while Instant::now() < stop_by && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                signal(pid, libc::SIGKILL);
                let _ = child.wait();
            }
            let _ = fs::remove_file(&pid_path);
            return Err(format!(
                "the node did not accept connections on {api} and {signaling} within {} s and was stopped; last lines of {}:\n{}",
                DAEMON_START_DEADLINE.as_secs(),
                log_path.display(),
                log_tail(&log_path, log_start)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sora stop`: SIGTERM to the pid in `<data_dir>/sora.pid`, then waits.
fn stop(config: &Config) -> Result<(), String> {
    let pid_path = config.data_dir.join("sora.pid");
    let Some(pid) = read_pid(&pid_path)? else {
        return Err(format!("not running (no pid file {})", pid_path.display()));
    };
    if !process_alive(pid) {
        let _ = fs::remove_file(&pid_path);
        return Err(format!(
            "not running (pid {pid} is gone; removed the stale {})",
            pid_path.display()
        ));
    }
    if !signal(pid, libc::SIGTERM) {
        return Err(format!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let deadline = Instant::now() + STOP_DEADLINE;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return Err(format!(
                "pid {pid} did not exit within {} s of SIGTERM; {} kept",
                STOP_DEADLINE.as_secs(),
                pid_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = fs::remove_file(&pid_path);
    println!("sora stopped (pid {pid})");
    Ok(())
}

/// The pid in a pid file; `None` if there is no file.
fn read_pid(path: &Path) -> Result<Option<u32>, String> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|p| *p > 0 && i32::try_from(*p).is_ok())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "{}: {:?} is not a pid; remove the file if no node runs",
                    path.display(),
                    text.trim()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the pid file whole or not at all (write, then rename).
fn write_pid(path: &Path, pid: u32) -> Result<(), String> {
    let tmp = path.with_extension("pid.tmp");
    fs::write(&tmp, format!("{pid}\n"))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Whether `pid` is a process that has not exited (a zombie counts as exited).
fn process_alive(pid: u32) -> bool {
    // read_pid only returns pids that fit in pid_t.
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(raw, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // A zombie whose new parent does not reap it still "exists" for kill().
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_none_or(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// Sends `sig` to `pid`; whether it was delivered.
fn signal(pid: u32, sig: libc::c_int) -> bool {
    match libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions.
        Ok(raw) if raw > 0 => unsafe { libc::kill(raw, sig) == 0 },
        _ => false,
    }
}

/// 127.0.0.1 for an unspecified bind address, else the address itself.
fn reachable(ip: IpAddr) -> IpAddr {
    if ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        ip
    }
}

fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok()
}

/// The last lines the node wrote to its log since `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(e) = read {
        return format!("(cannot read the log: {e})");
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(the log is empty)".into();
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn arguments() {
        assert_eq!(
            args("start").unwrap(),
            Args {
                cmd: Cmd::Start,
                config: ConfigSource::Auto(None)
            }
        );
        assert_eq!(
            args("daemon --config /etc/sora.conf").unwrap(),
            Args {
                cmd: Cmd::Daemon,
                config: ConfigSource::Auto(Some("/etc/sora.conf".into()))
            }
        );
        assert_eq!(
            args("--config=a.conf stop").unwrap().config,
            ConfigSource::Auto(Some("a.conf".into()))
        );
        assert_eq!(
            args("start --no-config").unwrap().config,
            ConfigSource::Defaults
        );
        assert_eq!(args("-V").unwrap().cmd, Cmd::Version);
        assert_eq!(args("version").unwrap().cmd, Cmd::Version);
        assert_eq!(args("--help").unwrap().cmd, Cmd::Help);
        assert_eq!(args("").unwrap_err(), "no command given");
        assert_eq!(args("start --config").unwrap_err(), "--config needs a FILE");
        assert_eq!(
            args("start --config=").unwrap_err(),
            "--config needs a FILE"
        );
        assert_eq!(
            args("start stop").unwrap_err(),
            "unexpected argument \"stop\""
        );
        assert_eq!(
            args("start --verbose").unwrap_err(),
            "unexpected argument \"--verbose\""
        );
        assert_eq!(
            args("start --no-config -c x").unwrap_err(),
            "--config / --no-config given twice"
        );
    }

    #[test]
    fn pid_files() {
        let dir = std::env::temp_dir().join(format!("sora-main-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("sora.pid");
        assert_eq!(read_pid(&p).unwrap(), None);
        write_pid(&p, 4242).unwrap();
        assert_eq!(read_pid(&p).unwrap(), Some(4242));
        fs::write(&p, "garbage").unwrap();
        assert!(read_pid(&p).unwrap_err().contains("is not a pid"));
        fs::write(&p, "0").unwrap();
        assert!(read_pid(&p).is_err());
        assert!(process_alive(std::process::id()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exited_child_is_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Unreaped, the child is a zombie: not alive.
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid) {
            assert!(Instant::now() < deadline, "child never exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn log_tail_shows_only_new_lines() {
        let dir = std::env::temp_dir().join(format!("sora-log-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("sora.log");
        fs::write(&p, "old run\n").unwrap();
        let from = fs::metadata(&p).unwrap().len();
        assert_eq!(log_tail(&p, from), "(the log is empty)");
        let mut text = String::from("old run\n");
        for i in 0..30 {
            text.push_str(&format!("line {i}\n"));
        }
        fs::write(&p, &text).unwrap();
        let tail = log_tail(&p, from);
        assert!(
            tail.starts_with("line 10\n") && tail.ends_with("line 29"),
            "{tail}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
