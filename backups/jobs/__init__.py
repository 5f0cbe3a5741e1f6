"""Jobs that are not the backup script (verify, restore, off-site copy) run as their own process under
the runner's supervisor, like the script: they outlive a restart of the service, are cancelled by ending
their process group, and report through their output. Pure: a job process never loads Django.

`python -m backups.jobs <kind> <params as JSON>`; secrets come in its environment, never in its argv.
"""
