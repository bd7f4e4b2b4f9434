import asyncio
import json
import websockets

async def test_websocket():
    uri = "ws://localhost:8000/v1/libraries/{library_id}/ws"

    async with websockets.connect(uri) as websocket:
        # Receive welcome
        welcome = await websocket.recv()
        print(json.loads(welcome))

        # Send search request
        await websocket.send(json.dumps({
            "type": "request",
            "action": "search",
            "request_id": "123",
            "data": {"query_text": "AI", "k": 5}
        }))

        # Receive response
        response = await websocket.recv()
        print(json.loads(response))

        # Wait for events
        while True:
            message = await websocket.recv()
            data = json.loads(message)
            if data["type"] == "event":
                print(f"Event: {data['event_type']}")

asyncio.run(test_websocket())
