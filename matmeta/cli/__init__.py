"""Command line: one module per subcommand, each thin (parse, call the library, print or write)."""
