"""What a person sees: consoles (`console`), the plan's views (`plan_views`), the live progress of
`up` (`progress`), and tables (`tables`)."""
