"""Who is asking: the add-in's tokens (`identity`: Exchange identity tokens, Entra ID access
tokens), and the OpenID Connect sign-ins (`oidc`) of users to their personal VMRs and the
organizer page (`users`) and of admins to the console (`admins`), with their sessions."""
