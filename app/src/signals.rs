//! The signals pgwi acts on, per platform. `pgwi proxy` stops on SIGTERM or SIGINT (on Windows: Ctrl-C or
//! Ctrl-Break); `pgwi exec` passes signals on to its command instead of stopping ([`Forwarder`]).

#[cfg(unix)]
pub use unix::{Forwarder, termination};
#[cfg(windows)]
pub use windows::{Forwarder, termination};

#[cfg(unix)]
mod unix {
    use anyhow::Context as _;
    use rustix::process::{Pid, Signal};
    use tokio::signal::unix::{SignalKind, signal};

    /// Waits for SIGTERM or SIGINT; which one came.
    pub async fn termination() -> anyhow::Result<&'static str> {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        })
    }

    /// The signals `pgwi exec` passes on to its command, and their numbers.
    const FORWARDED: [(SignalKind, Signal, &str); 6] = [
        (SignalKind::terminate(), Signal::TERM, "SIGTERM"),
        (SignalKind::interrupt(), Signal::INT, "SIGINT"),
        (SignalKind::hangup(), Signal::HUP, "SIGHUP"),
        (SignalKind::quit(), Signal::QUIT, "SIGQUIT"),
        (SignalKind::user_defined1(), Signal::USR1, "SIGUSR1"),
        (SignalKind::user_defined2(), Signal::USR2, "SIGUSR2"),
    ];

    /// Catches the signals a supervisor sends (so they do not end pgwi) and passes each on to the child.
    pub struct Forwarder {
        streams: Vec<(tokio::signal::unix::Signal, Signal, &'static str)>,
    }

    impl Forwarder {
        /// Installs the handlers; do it before the child starts, so no signal falls between.
        pub fn install() -> anyhow::Result<Self> {
            let mut streams = Vec::new();
            for (kind, number, name) in FORWARDED {
                let stream =
                    signal(kind).with_context(|| format!("installing the {name} handler"))?;
                streams.push((stream, number, name));
            }
            Ok(Self { streams })
        }

        /// Waits for the next signal and sends it to `child` (a process id), unless it is a terminal's
        /// Ctrl-C or Ctrl-\ that reached the child already: a terminal signals its whole foreground
        /// process group, the child included.
        pub async fn forward_next(&mut self, child: u32) {
            let (number, name) = std::future::poll_fn(|cx| {
                for (stream, number, name) in &mut self.streams {
                    if let std::task::Poll::Ready(Some(())) = stream.poll_recv(cx) {
                        return std::task::Poll::Ready((*number, *name));
                    }
                }
                std::task::Poll::Pending
            })
            .await;
            if (number == Signal::INT || number == Signal::QUIT) && in_terminal_foreground() {
                tracing::debug!(
                    signal = name,
                    "the terminal sent the signal to the command too"
                );
                return;
            }
            let Some(pid) = i32::try_from(child).ok().and_then(Pid::from_raw) else {
                return;
            };
            tracing::debug!(
                signal = name,
                pid = child,
                "passing the signal on to the command"
            );
            let _ = rustix::process::kill_process(pid, number);
        }
    }

    /// Whether pgwi's process group is the foreground group of its controlling terminal (a Ctrl-C there
    /// reaches the child), whatever stdin is (`cat x.sql | pgwi exec -- psql`).
    fn in_terminal_foreground() -> bool {
        std::fs::File::open("/dev/tty").is_ok_and(|tty| {
            rustix::termios::tcgetpgrp(&tty)
                .is_ok_and(|foreground| foreground == rustix::process::getpgrp())
        })
    }
}

#[cfg(windows)]
mod windows {
    /// Waits for Ctrl-C or Ctrl-Break; which one came.
    pub async fn termination() -> anyhow::Result<&'static str> {
        use anyhow::Context as _;
        let mut brk =
            tokio::signal::windows::ctrl_break().context("installing the Ctrl-Break handler")?;
        Ok(tokio::select! {
            result = tokio::signal::ctrl_c() => {
                result.context("installing the Ctrl-C handler")?;
                "Ctrl-C"
            }
            _ = brk.recv() => "Ctrl-Break",
        })
    }

    /// Keeps Ctrl-C and Ctrl-Break from ending pgwi while its command runs: the console sends them to
    /// every process attached to it, the command included, which decides what they mean.
    pub struct Forwarder {
        ctrl_c: tokio::signal::windows::CtrlC,
        ctrl_break: tokio::signal::windows::CtrlBreak,
    }

    impl Forwarder {
        /// Installs the handlers; do it before the child starts.
        pub fn install() -> anyhow::Result<Self> {
            use anyhow::Context as _;
            Ok(Self {
                ctrl_c: tokio::signal::windows::ctrl_c()
                    .context("installing the Ctrl-C handler")?,
                ctrl_break: tokio::signal::windows::ctrl_break()
                    .context("installing the Ctrl-Break handler")?,
            })
        }

        /// Waits for the next console event; the command got it from the console itself.
        pub async fn forward_next(&mut self, _child: u32) {
            tokio::select! {
                _ = self.ctrl_c.recv() => {}
                _ = self.ctrl_break.recv() => {}
            }
        }
    }
}
