//! Where the proxy listens: TCP addresses and Unix socket directories, bound with the care a socket that
//! hands out sessions as the identity needs (a umask while binding, a mode set before the first accept, a
//! stale socket of a crashed proxy replaced, a directory every user may write to refused). Unix sockets are
//! Unix-only: on Windows a socket directory is refused with the fix (a loopback address).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
#[cfg(unix)]
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use super::{PENDING_PER_LISTENER, ProxyServerError};

/// Where clients connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address; a non-loopback one needs a local password.
    Tcp(SocketAddr),
    /// A socket directory and the port in the socket file's name (`DIR/.s.PGSQL.PORT`, as libpq looks).
    Unix {
        /// The directory.
        dir: PathBuf,
        /// The port in the file's name.
        port: u16,
    },
}

impl Listen {
    /// Whether its clients come over the network (a non-loopback TCP address).
    pub fn is_remote(&self) -> bool {
        matches!(self, Listen::Tcp(addr) if !addr.ip().is_loopback())
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix { dir, port } => write!(f, "{}", socket_path(dir, *port).display()),
        }
    }
}

/// The socket file libpq looks for in `dir` for `port`.
pub(super) fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// Removes a Unix socket file when the listener ends.
#[cfg(unix)]
pub(super) struct SocketFile(pub(super) PathBuf);

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A bound listener and what its clients must prove.
pub(super) struct Listener {
    pub(super) socket: BoundSocket,
    /// Clients on it must prove the local password (and use TLS when a certificate is configured).
    pub(super) remote: bool,
    /// Slots for clients in their start-up.
    pub(super) pending: Arc<Semaphore>,
    /// Clients in their start-up per address (remote listeners).
    pub(super) peers: super::PeerCounts,
}

pub(super) enum BoundSocket {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener, SocketFile),
}

fn listen_error(
    address: impl std::fmt::Display,
    detail: impl std::fmt::Display,
) -> ProxyServerError {
    ProxyServerError::Listen {
        address: address.to_string(),
        detail: detail.to_string(),
    }
}

/// Binds `listen` (a socket file gets `mode`); the listener and the address it is bound to.
pub(super) async fn bind(
    listen: &Listen,
    #[cfg_attr(not(unix), allow(unused_variables))] mode: u32,
) -> Result<(Listener, String), ProxyServerError> {
    let (socket, actual) = match listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| listen_error(addr, e))?;
            let actual = listener.local_addr().map_err(|e| listen_error(addr, e))?;
            (BoundSocket::Tcp(listener), actual.to_string())
        }
        #[cfg(not(unix))]
        Listen::Unix { dir, port } => {
            return Err(listen_error(
                socket_path(dir, *port).display(),
                NO_UNIX_SOCKETS,
            ));
        }
        #[cfg(unix)]
        Listen::Unix { dir, port } => {
            check_socket_directory(dir).map_err(ProxyServerError::SocketDirectory)?;
            let path = socket_path(dir, *port);
            remove_stale_socket(&path).await?;
            let (listener, file) = bind_unix(&path, mode)?;
            (
                BoundSocket::Unix(listener, file),
                path.display().to_string(),
            )
        }
    };
    let listener = Listener {
        socket,
        remote: listen.is_remote(),
        pending: Arc::new(Semaphore::new(PENDING_PER_LISTENER)),
        peers: super::PeerCounts::default(),
    };
    Ok((listener, actual))
}

/// Whoever may remove or rename files in the socket directory could replace the socket with their own and
/// receive the clients meant for the proxy: a directory every user may write to (without the sticky bit,
/// which keeps them from touching others' files) is refused, and so is one owned by another user (its
/// owner may do anything in it, sticky or not; through a symbolic link, the target counts). A group that
/// may write is warned about. A directory that does not exist is left to the bind's error.
#[cfg(unix)]
pub fn check_socket_directory(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "the socket directory {}, which every user may write to (mode {:04o}): any of them could \
             replace the socket with their own and receive the clients meant for the proxy",
            dir.display(),
            mode & 0o7777,
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "the socket directory {}, which is owned by another user (uid {}): that user could replace \
             the socket with their own and receive the clients meant for the proxy",
            dir.display(),
            meta.uid()
        ));
    }
    if mode & 0o020 != 0 && mode & 0o1000 == 0 {
        tracing::warn!(
            directory = %dir.display(),
            "the socket directory's group may write to it: its members could replace the socket"
        );
    }
    Ok(())
}

/// Why a socket directory cannot be served on this system, and the fix.
#[cfg(not(unix))]
const NO_UNIX_SOCKETS: &str = "Unix socket directories are not served on Windows: listen on a loopback address (127.0.0.1:5432)";

/// On Windows no socket directory can be served: the reason and the fix.
#[cfg(not(unix))]
pub fn check_socket_directory(dir: &Path) -> Result<(), String> {
    Err(format!(
        "{} is a socket directory; {NO_UNIX_SOCKETS}",
        dir.display()
    ))
}

/// Removes the socket a proxy that did not exit cleanly left behind; refuses anything else at `path`.
#[cfg(unix)]
async fn remove_stale_socket(path: &Path) -> Result<(), ProxyServerError> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let address = path.display();
    if !meta.file_type().is_socket() {
        return Err(listen_error(
            &address,
            "it exists and is not a socket: remove it or listen elsewhere",
        ));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(listen_error(
            &address,
            "it is in use by a running server: stop it or listen elsewhere",
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| listen_error(&address, format!("removing the stale socket: {e}")))
}

/// Binds the socket under a umask that gives it exactly `mode` (who may connect gets a session as the
/// identity: only whom the mode names). Nobody can connect with wider permissions first, and no `chmod` by
/// path follows that a symbolic link swapped in could redirect.
#[cfg(unix)]
fn bind_unix(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), ProxyServerError> {
    use rustix::fs::Mode;
    let address = path.display();
    // The umask is the process's: held only for the bind, and only ever narrower than the usual 022.
    let previous = rustix::process::umask(Mode::from_raw_mode(!mode & 0o777));
    let bound = UnixListener::bind(path);
    rustix::process::umask(previous);
    let listener = bound.map_err(|e| {
        listen_error(
            &address,
            format!("{e} (the directory must exist and be writable)"),
        )
    })?;
    Ok((listener, SocketFile(path.to_owned())))
}
