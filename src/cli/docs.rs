//! `rolloutd completions <shell>` and `rolloutd man`: generated from the clap definition,
//! so they never drift from the real options.

use std::io::Write;

use clap::CommandFactory;

use super::{failure, Answer, Cli, Failure};

/// Shells `rolloutd completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn completions(shell: Shell) -> Result<Answer, Failure> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rolloutd", &mut out);
    emit(&out)
}

/// The man page (roff) on stdout: `rolloutd man > ~/.local/share/man/man1/rolloutd.1`.
pub fn man() -> Result<Answer, Failure> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(|e| failure("io", e))?;
    emit(&out)
}

fn emit(bytes: &[u8]) -> Result<Answer, Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|_| stdout.flush()) {
        // A reader that went away (`| head`) wanted no more.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(failure("io", e)),
        _ => {}
    }
    Ok(Answer {
        json: serde_json::Value::Null,
        human: String::new(),
        positive: true,
    })
}
