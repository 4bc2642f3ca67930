"""The console's pages, one module per resource; ``attacker.service.console.router`` assembles them."""
