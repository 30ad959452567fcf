//! Writes microdib's man page and shell completions (generated from the option table) into a
//! directory: `cargo run --bin microdib-docs -- docs`.

use std::path::PathBuf;

use microdib::cli::docs;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "docs".into()));
    std::fs::create_dir_all(dir.join("completions"))?;
    std::fs::write(dir.join("microdib.1"), docs::man_page("microdib"))?;
    for (file, shell) in [
        ("microdib.bash", clap_complete::Shell::Bash),
        ("_microdib", clap_complete::Shell::Zsh),
        ("microdib.fish", clap_complete::Shell::Fish),
    ] {
        std::fs::write(dir.join("completions").join(file), docs::completion("microdib", shell))?;
    }
    println!("wrote {}/microdib.1 and {}/completions/", dir.display(), dir.display());
    Ok(())
}
