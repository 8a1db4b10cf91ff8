//! The local transport: each agent session is a child `llem-agent serve --stdio` of the
//! coordinator, started in the run's working directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::connect::{agent_binary, ConnectError, Connector, OpenRequest, Session};
use super::session::ChildSession;

#[derive(Debug)]
pub struct LocalConnector {
    working_dir: PathBuf,
}

impl LocalConnector {
    pub fn new(working_dir: &Path) -> Self {
        LocalConnector { working_dir: working_dir.to_owned() }
    }
}

impl Connector for LocalConnector {
    fn deploy(&self) -> Result<String, ConnectError> {
        let agent = agent_binary();
        if !agent.is_file() {
            return Err(ConnectError::Refused(format!(
                "the agent {} does not exist: build it (cargo build --bins) or set LLEM_AGENT",
                agent.display()
            )));
        }
        Ok(agent.display().to_string())
    }

    fn open(&self, request: OpenRequest) -> Result<Box<dyn Session>, ConnectError> {
        let mut command = Command::new(self.deploy()?);
        command.args(["serve", "--stdio"]);
        // A run resumed from another directory still finds `models/…` where it was.
        if self.working_dir.is_dir() {
            command.current_dir(&self.working_dir);
        }
        Ok(Box::new(ChildSession::start(command, &request)?))
    }

    fn reconnect(&self) -> Result<(), ConnectError> {
        // Nothing to wait for: a new child starts at once.
        Ok(())
    }

    fn round_trip(&self) -> Result<Duration, ConnectError> {
        Ok(Duration::ZERO)
    }

    fn close(&self) {}
}
