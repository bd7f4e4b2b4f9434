const ws = new WebSocket('ws://localhost:8000/v1/libraries/{id}/ws');

ws.onopen = () => {
  // Send search request
  ws.send(JSON.stringify({
    type: 'request',
    action: 'search',
    request_id: '123',
    data: { query_text: 'AI', k: 5 }
  }));
};

ws.onmessage = (event) => {
  const msg = JSON.parse(event.data);

  if (msg.type === 'response') {
    console.log('Response:', msg.data);
  } else if (msg.type === 'event') {
    console.log('Event:', msg.event_type, msg.data);
  }
};
