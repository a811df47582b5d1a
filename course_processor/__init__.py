"""The course processor: decides every command on course-commands into one event.

Run a worker with `python -m course_processor` (see __main__.py for the settings).
domain.py decides, decider.py applies a decision to the tables, agents.py is the faust
agent, transactions.py and recovery.py repair faust-streaming's exactly_once.
"""
