//! `chat`: the clusterchat terminal client.
//!
//! Speaks protocol level 2 to a clusterchat server (directly or through an
//! nginx stream proxy), with the classic ChatClient's menu and commands.
//! Module map: [`app`] (menu and login), [`session`] (a logged-in user),
//! [`commands`] (command parsing), [`net`] (the connection), [`delivery`] and
//! [`state`] (what was received, and what is saved between runs), [`ui`]
//! (terminal or plain stdin/stdout) and [`complete`] (Tab completion).

mod app;
mod commands;
mod complete;
mod delivery;
mod net;
mod session;
mod state;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Where the client connects when no address is given.
const DEFAULT_SERVER: &str = "127.0.0.1:6000";

const AFTER_HELP: &str = "\
After connecting, choose 1 to log in (id and password), 2 to register
(name and password) or 3 to quit. Once logged in, type commands such as
chat:ID:TEXT, groupchat:ID:TEXT, addfriend:ID, creategroup:NAME:DESC,
addgroup:ID, history:ID, friends, groups, loginout or quit; type help
for the full list.

When stdin is not a terminal, the client reads plain lines and prints
one line per event, so it can be scripted:
  printf '1\\n5\\nsecret\\nchat:6:hello\\nquit\\n' | chat 127.0.0.1:6000

Piped, the client fails fast: at a failed login or registration, a menu
line that is not valid, or a lost connection it stops, says why on stderr
and exits with a status a script can test:
  0  quit, or end of input
  1  the server cannot be reached at start
  2  bad command line
  3  login or registration refused, or an invalid menu line
  4  connection lost, or the session replaced by a login elsewhere
At a terminal it says what failed and shows the menu again.

The client keeps, per server and user, the highest message seq it holds
(sent at login so old messages are not replayed) and a login token that
lets an empty password resume the session. At a terminal, when the
connection drops, it logs back in by itself with that token (retrying after
1, 2, 4, ... up to 30 s) and sends again the messages the server had not
confirmed, under the same client message id, so each arrives once.";

/// The clusterchat terminal client.
#[derive(Debug, Parser)]
#[command(name = "chat", version, about, long_about = None, after_help = AFTER_HELP)]
struct Args {
    /// Server address HOST:PORT: a clusterchat server, or a proxy in front of
    /// one. Overrides --server.
    #[arg(value_name = "ADDR")]
    addr: Option<String>,

    /// Server address HOST:PORT [default: 127.0.0.1:6000].
    #[arg(long = "server", value_name = "ADDR", env = "CHAT_SERVER")]
    server: Option<String>,

    /// Directory for saved state (last seen message and login token)
    /// [default: $XDG_STATE_HOME/clusterchat or ~/.local/state/clusterchat].
    #[arg(long, value_name = "DIR", env = "CHAT_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Connect with TLS, verifying the server's certificate against --ca or,
    /// without it, the system's trusted CA certificates.
    #[arg(long)]
    tls: bool,

    /// CA certificates (PEM) to verify the server's certificate with, instead
    /// of the system's (a private CA, or a self-signed certificate).
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca: Option<PathBuf>,

    /// The name the server's certificate must carry [default: the host of
    /// the address]: for connecting by IP address to a server whose
    /// certificate names a host, or through a tunnel.
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_name: Option<String>,

    /// Seconds between heartbeat PINGs while logged in.
    #[arg(long, value_name = "SECS", default_value_t = 30, hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_secs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let server = args
        .addr
        .or(args.server)
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let state_dir = args.state_dir.or_else(|| {
        state::default_dir(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
    });
    let tls = if args.tls {
        match net::Tls::new(&server, args.ca.as_deref(), args.tls_name.as_deref()) {
            Ok(t) => Some(t),
            Err(e) => {
                // A --ca or --tls-name that cannot be used: a bad command line.
                eprintln!("chat: {e:#}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let settings = app::Settings {
        server: net::Server { addr: server, tls },
        state_dir,
        heartbeat: Duration::from_secs(args.heartbeat_secs),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat: cannot start the runtime: {e}");
            return ExitCode::from(app::exit::ERROR);
        }
    };
    let ui = ui::Ui::new();
    match rt.block_on(app::App::new(settings, ui).run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("chat: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn positional_address_wins() {
        let a = Args::try_parse_from(["chat", "--server", "a:1", "b:2"]).unwrap();
        assert_eq!(a.addr.or(a.server).as_deref(), Some("b:2"));
        let a = Args::try_parse_from(["chat", "--server", "a:1"]).unwrap();
        assert_eq!(a.addr.or(a.server).as_deref(), Some("a:1"));
    }
}
