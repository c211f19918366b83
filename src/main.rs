fn main() -> std::process::ExitCode {
    rolloutd::cli::main()
}
