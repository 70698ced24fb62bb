from mechinterp.quickstart import run_from_command_line

run_from_command_line()
