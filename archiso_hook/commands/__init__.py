"""The command line's commands, one module each, imported only for the command run
(cli.COMMANDS names them): `status` never loads the builder, `plan` never psutil."""
