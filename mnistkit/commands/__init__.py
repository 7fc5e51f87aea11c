"""The `mnist-*` commands: each parses its flags and hands them to the library, one page each."""
