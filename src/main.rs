fn main() -> std::process::ExitCode {
    popvault::cli::main()
}
