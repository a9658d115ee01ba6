"""The scheduling rules, pure and without I/O: the meeting model and the one decision each
meeting request gets (`meetings.decide`), recurrence and its occurrences, and the forms of an
alias (drawing one, its tokens, normalising what a caller dialled)."""
