"""What every service of this project needs the same way (today: its JSON log lines).

Services never import each other; they import this package, as they import `schemas`.
"""
