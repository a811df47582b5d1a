"""The course processor: decides every command on course-commands into at most one event.

Run a worker with `python -m course_processor` (see __main__.py for the settings).
domain.py decides (pure), values.py says what the tables hold, decider.py plans a
command's event and table changes, agents.py is the faust agent, bootstrap.py puts the
service together. state.py and tables.py keep the tables on local disk, exactly the
committed state; restore.py and migrate.py bring it up to date on assignment;
transactions.py and recovery.py repair faust-streaming's exactly_once around them.
"""
