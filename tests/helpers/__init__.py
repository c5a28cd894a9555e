"""What the tests share: servers, agno apps, scrapers, agno's own truth. Imported as tests.helpers."""
