//! A real Docker daemon (Debian's `docker.io`, installed by tests/setup.sh) for the end-to-end
//! tests: started per test with its own data root, exec root and socket, no iptables and no
//! bridge, and the containerd it starts for itself, which `ctr` reaches too. Stopped (with that
//! containerd) when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
}

/// containerd's namespace for `ctr` (docker keeps its own, `moby`).
const CTR_NAMESPACE: &str = "wharf-test";

impl Dockerd {
    pub fn start() -> Dockerd {
        Dockerd::start_with("{}")
    }

    /// A daemon with `daemon_json` as its configuration (e.g. `registry-mirrors`).
    pub fn start_with(daemon_json: &str) -> Dockerd {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let mut cmd = Command::new(super::tool("dockerd"));
        cmd.arg("--data-root")
            .arg(dir.path().join("root"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--host")
            .arg(format!(
                "unix://{}",
                dir.path().join("docker.sock").display()
            ))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            // A daemon.json of its own: nothing from the machine's /etc/docker.
            .arg("--config-file")
            .arg(Dockerd::write(&dir, "daemon.json", daemon_json))
            .stdout(log.try_clone().unwrap())
            .stderr(Stdio::from(log))
            // Its own process group: dropping the daemon stops its containerd too.
            .process_group(0);
        // The daemon dies with the test process, even one that panics past `Drop`.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("dockerd starts (tests/setup.sh installs docker.io)");
        let d = Dockerd { child, dir };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = d
                .docker()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
                && d.ctr()
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success());
            if ready {
                return d;
            }
            assert!(
                Instant::now() < until,
                "dockerd did not answer within 60 s:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The `docker` client on this daemon, with a config directory of its own (credentials).
    pub fn docker(&self) -> Command {
        let mut c = Command::new(super::tool("docker"));
        c.env("DOCKER_CONFIG", self.dir.path().join("client"))
            .arg("--host")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ));
        c
    }

    /// `ctr` on the daemon's containerd, in a namespace of the tests' own.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new(super::tool("ctr"));
        c.arg("--address")
            .arg(self.dir.path().join("exec/containerd/containerd.sock"))
            .args(["--namespace", CTR_NAMESPACE]);
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SIGTERM lets the daemon unmount its layers and stop its containerd; then the group goes.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
