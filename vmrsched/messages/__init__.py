"""What the service writes to people: the answer to each meeting request and the messages it
brings (`answers.plan`, rendered from the admin's templates), their iCalendar parts, and the
meeting requests an admin makes by hand (`vmrsched invite`)."""
